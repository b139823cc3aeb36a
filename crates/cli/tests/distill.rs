//! `stride distill` end to end on a tiny random model: a killed job resumes to the same files
//! as an uninterrupted one, shards merge to the same files as a single run, other settings are
//! refused, and `generate` uses (and guards) the schedules.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{interrupt_once_started, model, stride, temp_dir};

/// A small job: 6 samples in blocks of 2, two solvers, two step counts, a 16-step teacher.
const JOB: &[&str] = &["--samples", "6", "--batch", "2", "--nfe", "3,5", "--teacher-steps", "16", "--quiet"];

fn distill(out: &Path, extra: &[&str]) -> Output {
    stride()
        .args(["distill", "--model"])
        .arg(model())
        .args(JOB)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stride failed: {stderr}");
    stderr
}

/// The schedule files a job wrote, by name, without the seconds it measured (everything else,
/// the sigmas, per-sample schedules, costs and model evaluations included, must match).
fn schedules(out: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
            json["compute"].as_object_mut().expect("the job records its compute").remove("seconds");
            (p.file_name().unwrap().to_string_lossy().into_owned(), json.to_string())
        })
        .collect();
    files.sort();
    files
}

/// Compares by name first, so a failure does not print whole files.
fn assert_same(got: &[(String, String)], expected: &[(String, String)]) {
    let names = |f: &[(String, String)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(expected));
    for ((name, a), (_, b)) in got.iter().zip(expected) {
        assert!(a == b, "{name} differs from the single run's");
    }
}

/// The uninterrupted single run of [`JOB`]: its folder and files.
fn single_run() -> &'static (PathBuf, Vec<(String, String)>) {
    static RUN: std::sync::OnceLock<(PathBuf, Vec<(String, String)>)> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let out = temp_dir("distill-single");
        ok(&distill(&out, &[]));
        let files = schedules(&out);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dpmpp_2m-3.json", "dpmpp_2m-5.json", "euler-3.json", "euler-5.json"]);
        (out, files)
    })
}

#[test]
fn a_killed_job_resumes_to_the_uninterrupted_result() {
    let out = temp_dir("distill-resume");
    ok(&distill(&out, &[]));
    // What a kill during the second block leaves: the first block's lines, then a partial line.
    let records = out.join("work/records-0-of-1.jsonl");
    let text = std::fs::read_to_string(&records).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "one line per sample");
    let kept = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..lines[2].len() / 2]);
    std::fs::write(&records, kept).unwrap();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let stderr = ok(&distill(&out, &[]));
    assert!(stderr.contains("1 done, 2 to do"), "the resumed job must skip the finished block: {stderr}");
    assert_same(&schedules(&out), &single_run().1);

    // A line that is not a record cut short (edited by hand, say) is an error naming it.
    std::fs::write(&records, format!("{}\n{{\"block\": \"first\"}}\n", lines[0])).unwrap();
    let edited = distill(&out, &[]);
    let stderr = String::from_utf8_lossy(&edited.stderr);
    assert!(!edited.status.success() && stderr.contains("records-0-of-1.jsonl:2"), "{stderr}");
}

#[test]
fn an_interrupted_job_stops_after_its_block_and_resumes() {
    // Twenty blocks of one sample, so that the interrupt lands before the last.
    let job = ["--samples", "20", "--batch", "1", "--nfe", "3", "--teacher-steps", "16", "--quiet"];
    let (out, straight) = (temp_dir("distill-interrupt"), temp_dir("distill-interrupt-straight"));
    let run = |out: &Path| {
        let mut cmd = stride();
        cmd.args(["distill", "--model"]).arg(model()).args(job).arg("--out").arg(out);
        cmd
    };
    // The handler is installed before this line is printed.
    let (status, rest) = interrupt_once_started(&mut run(&out), "distilling");
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("Run the same command again"), "{rest}");
    let records = std::fs::read_to_string(out.join("work/records-0-of-1.jsonl")).unwrap_or_default();
    let kept = records.lines().count();
    assert!((1..20).contains(&kept), "stopped after a whole block, before the last: {kept} kept");
    assert!(records.ends_with('\n'), "no block is left cut short");

    let resumed = ok(&run(&out).output().unwrap());
    assert!(resumed.contains(&format!("{kept} done, {} to do", 20 - kept)), "{resumed}");
    ok(&run(&straight).output().unwrap());
    assert_same(&schedules(&out), &schedules(&straight));
}

#[test]
fn shards_merge_to_the_single_run_result() {
    let out = temp_dir("distill-shards");
    let first = ok(&distill(&out, &["--shard", "0/2"]));
    assert!(first.contains("stride distill merge"), "a shard says how to merge: {first}");
    let early = stride().args(["distill", "merge", "--out"]).arg(&out).output().unwrap();
    assert!(!early.status.success(), "merging with a shard missing must fail");
    assert!(String::from_utf8_lossy(&early.stderr).contains("not done yet"));
    ok(&distill(&out, &["--shard", "1/2"]));
    // The last shard to finish merges on its own; an explicit merge writes the same files.
    assert_same(&schedules(&out), &single_run().1);
    ok(&stride().args(["distill", "merge", "--out"]).arg(&out).output().unwrap());
    assert_same(&schedules(&out), &single_run().1);
}

#[test]
fn other_settings_and_bad_input_are_clear_errors() {
    let out = temp_dir("distill-errors");
    ok(&distill(&out, &["--shard", "0/3"]));
    let changed = distill(&out, &["--cfg-scale", "2"]);
    assert!(!changed.status.success());
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(stderr.contains("other settings (cfg_scale)"), "{stderr}");
    // A hand-edited manifest with a zero count is refused, not divided by.
    let job = out.join("work").join("job.json");
    let text = std::fs::read_to_string(&job).unwrap();
    let batch =
        text.lines().find(|l| l.trim_start().starts_with("\"batch\"")).expect("job.json names its batch");
    std::fs::write(&job, text.replace(batch, "  \"batch\": 0,")).unwrap();
    let merged = stride().args(["distill", "merge", "--out"]).arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&merged.stderr);
    assert!(!merged.status.success() && stderr.contains("`batch` is 0"), "{stderr}");
    for (args, expected) in [
        (&["--shard", "2/2"][..], "expected I/N"),
        (&["--solver", "heun"][..], "heun"),
        (&["--method", "exact", "--solver", "dpmpp_2m"][..], "--method oss"),
        (&["--nfe", "40"][..], "--teacher-steps"),
    ] {
        let out = distill(&temp_dir("distill-bad"), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn generate_uses_a_distilled_schedule_and_refuses_a_mismatched_one() {
    let dir = temp_dir("distill-generate");
    let euler = dir.join("euler-5.json");
    std::fs::copy(single_run().0.join("euler-5.json"), &euler).unwrap();
    let run = |extra: &[&str]| {
        stride()
            .current_dir(&dir)
            .args(["generate", "--quiet", "a red circle", "--seed", "3", "--model"])
            .arg(model())
            .args(extra)
            .output()
            .unwrap()
    };
    ok(&run(&["--sampler", "euler", "--schedule", "euler-5.json", "-o", "a.png"]));
    let info = stride().args(["info"]).arg(dir.join("a.png")).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    let sigmas: Vec<f64> =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&euler).unwrap()).unwrap()
            ["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::INFINITY))
            .collect();
    let listed: Vec<String> = sigmas.iter().map(|s| s.to_string()).collect();
    assert!(text.contains("Schedule type: distilled") && text.contains(&listed.join(",")), "{text}");
    assert!(text.contains("Steps: 5"), "{text}");
    // The same image from the sigma list alone: the metadata reproduces it.
    ok(&run(&["--sampler", "euler", "--sigmas", &listed.join(","), "-o", "b.png"]));
    assert_eq!(png_pixels(&dir.join("a.png")), png_pixels(&dir.join("b.png")));
    // Distilled for euler, not dpmpp_2m: refused, then allowed with --force.
    let refused = run(&["--sampler", "dpmpp_2m", "--schedule", "euler-5.json", "-o", "c.png"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("euler"), "{stderr}");
    assert!(!dir.join("c.png").exists());
    let forced = ok(&run(&["--sampler", "dpmpp_2m", "--schedule", "euler-5.json", "--force", "-o", "c.png"]));
    assert!(forced.contains("warning"), "{forced}");
}

fn png_pixels(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    buf
}
