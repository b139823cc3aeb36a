//! The work folder of a resumable, shardable job (`stride distill`, `stride train-policy`).
//!
//! The unit of work is a block of items. Each finished block's records are appended to
//! `OUT/work/records-I-of-N.jsonl` (shard I of N), so a killed job loses at most the block in
//! flight, and a block's result never depends on which shard or run computed it.
//! `OUT/work/job.json` pins the settings that determine the results; resuming or merging with
//! other settings is refused, naming the settings that differ.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The flags every resumable, shardable job takes (`distill`, `train-policy`).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Run only shard I of N (0-based), e.g. 3/8; then the job's `merge` subcommand.
    #[arg(long)]
    pub shard: Option<Shard>,
    #[arg(long, value_enum, default_value_t = crate::device::DeviceArg::Cpu)]
    pub device: crate::device::DeviceArg,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `I/N`: this process runs the blocks whose index is I modulo N.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole job in one process.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn owns(&self, block: usize) -> bool {
        block % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed =
            s.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Self { index, count }),
            _ => Err(format!("`{s}`: expected I/N with 0 <= I < N, e.g. 0/4 (a Slurm array's $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")),
        }
    }
}

/// The blocks a shard still has to do.
pub struct Plan {
    pub todo: Vec<usize>,
    done: usize,
    blocks: usize,
    batch: usize,
    shard: Shard,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blocks of {}; {} done, {} to do in shard {}/{}",
            self.blocks,
            self.batch,
            self.done,
            self.todo.len(),
            self.shard.index,
            self.shard.count
        )
    }
}

/// A line of a records file: one item of one block.
pub trait Record: Serialize + DeserializeOwned {
    fn block(&self) -> usize;
    fn item(&self) -> usize;
}

/// `OUT/work/` of a job; `command` names the job in messages (e.g. "stride distill").
pub struct WorkDir<'a> {
    pub out: &'a Path,
    pub command: &'static str,
}

impl WorkDir<'_> {
    fn manifest_path(&self) -> PathBuf {
        self.out.join("work").join("job.json")
    }

    pub fn read_manifest<M: DeserializeOwned>(&self) -> Result<M> {
        let path = self.manifest_path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} the --out of a `{}` job?)",
                path.display(),
                self.out.display(),
                self.command
            )
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        // The jobs divide by these counts: a zero (a hand-edited file) must be an error here.
        for count in ["batch", "samples", "seeds"] {
            if let Some(n) = value.get(count) {
                anyhow::ensure!(
                    n.as_u64().is_some_and(|n| n > 0),
                    "{}: `{count}` is {n}, it must be at least 1 (was the file edited?)",
                    path.display()
                );
            }
        }
        serde_json::from_value(value).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the manifest of a new job, or checks that a resumed one has the same settings.
    pub fn pin_manifest<M: Serialize + DeserializeOwned + PartialEq>(&self, manifest: &M) -> Result<()> {
        let path = self.manifest_path();
        if path.exists() {
            let pinned: M = self.read_manifest()?;
            if pinned != *manifest {
                let (a, b) = (serde_json::to_value(&pinned)?, serde_json::to_value(manifest)?);
                let differing: Vec<String> = a
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                    .map(|(k, _)| k.clone())
                    .collect();
                bail!(
                    "{} holds a job with other settings ({}); resume it with the same flags, or choose another --out",
                    path.display(),
                    differing.join(", ")
                );
            }
            return Ok(());
        }
        std::fs::create_dir_all(path.parent().expect("has a parent"))
            .with_context(|| format!("creating {}", self.out.display()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(manifest)? + "\n")?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Appends a finished block's records to the shard's file and syncs them to disk. A
    /// partial last line (a job killed mid-write) is ended first, so it stays one unreadable
    /// line instead of spoiling the next.
    pub fn append<R: Record>(&self, shard: Shard, records: &[R]) -> Result<()> {
        let path = self.out.join("work").join(format!("records-{}-of-{}.jsonl", shard.index, shard.count));
        let ends_cleanly =
            std::fs::read(&path).map_or(true, |bytes| bytes.last().is_none_or(|&b| b == b'\n'));
        let mut text = String::from(if ends_cleanly { "" } else { "\n" });
        for record in records {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all().with_context(|| format!("writing {}", path.display()))
    }

    /// Every complete block of every shard's records file, by block index, its records in item
    /// order: a block is complete when it has `block_len(block)` distinct items (a job killed
    /// mid-write leaves a line cut short, ignored; any other unreadable line is an error).
    /// Blocks at or past `blocks` are dropped.
    pub fn read_blocks<R: Record>(
        &self,
        blocks: usize,
        block_len: impl Fn(usize) -> usize,
    ) -> Result<BTreeMap<usize, Vec<R>>> {
        let work = self.out.join("work");
        let mut by_block: BTreeMap<usize, Vec<R>> = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&work) else { return Ok(by_block) };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        paths.sort();
        for path in paths {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let record = match serde_json::from_str::<R>(line) {
                    Ok(record) => record,
                    // Cut short: a job killed mid-write (its block is redone).
                    Err(e) if e.is_eof() => continue,
                    Err(e) => bail!(
                        "{}:{}: not a record of this job ({e}); delete the line to redo its block",
                        path.display(),
                        number + 1
                    ),
                };
                let block = by_block.entry(record.block()).or_default();
                if !block.iter().any(|r| r.item() == record.item()) {
                    block.push(record);
                }
            }
        }
        by_block.retain(|&b, records| b < blocks && records.len() == block_len(b));
        for records in by_block.values_mut() {
            records.sort_by_key(|r| r.item());
        }
        Ok(by_block)
    }

    /// What shard `shard` still has to do of `blocks` blocks of `batch` items.
    pub fn plan<R>(&self, shard: Shard, blocks: usize, batch: usize, done: &BTreeMap<usize, Vec<R>>) -> Plan {
        let todo = (0..blocks).filter(|&b| shard.owns(b) && !done.contains_key(&b)).collect();
        Plan { todo, done: done.len(), blocks, batch, shard }
    }

    /// After a shard's run: true when every block is done; otherwise says how to finish.
    pub fn finished<R>(&self, shard: Shard, blocks: usize, done: &BTreeMap<usize, Vec<R>>) -> bool {
        let missing = (0..blocks).filter(|b| !done.contains_key(b)).count();
        if missing > 0 {
            eprintln!(
                "shard {}/{} done; {missing} blocks of other shards remain. When every shard has finished: \
                 {} merge --out {}",
                shard.index,
                shard.count,
                self.command,
                self.out.display()
            );
        }
        missing == 0
    }

    /// After a block is appended: [`crate::interrupt::Stopped`] when a stop was asked for.
    pub fn stop_if_interrupted(&self) -> Result<()> {
        if crate::interrupt::requested() {
            return Err(crate::interrupt::Stopped(format!(
                "stopped; the finished blocks are kept in {}. Run the same command again to continue",
                self.out.join("work").display()
            ))
            .into());
        }
        Ok(())
    }

    /// An error unless every block of `0..blocks` is in `done`.
    pub fn require_all<R>(&self, blocks: usize, done: &BTreeMap<usize, Vec<R>>) -> Result<()> {
        let missing: Vec<usize> = (0..blocks).filter(|b| !done.contains_key(b)).collect();
        if !missing.is_empty() {
            bail!(
                "blocks {missing:?} of {blocks} are not done yet: run the shards that own them (block b \
                 belongs to shard b mod N) before merging",
            );
        }
        Ok(())
    }
}

/// A prompt file's lines: trimmed, without blank lines and `#` comments.
pub fn prompt_lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading prompts from {}", path.display()))?;
    Ok(numbered_lines(&text).map(|(_, line)| line.to_string()).collect())
}

/// A prompts file's lines with their numbers (from 1), trimmed, without blank lines, `#`
/// comments and the byte-order mark some editors write.
pub fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}
