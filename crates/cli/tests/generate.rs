//! `stride generate` / `stride info` end to end, through the built binary, on a tiny random
//! tiny-shapes model exported by `stride train-base` (the committed weights are not needed).

use std::path::Path;
use std::process::Output;

mod common;
use common::{model, stride, temp_dir};

fn generate(dir: &Path, args: &[&str]) -> Output {
    stride()
        .current_dir(dir)
        .args(["generate", "--quiet", "--model"])
        .arg(model())
        .args(args)
        .output()
        .unwrap()
}

fn pixels(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height, buf[..info.buffer_size()].to_vec())
}

#[test]
fn writes_png_with_parameters_that_info_reads_back() {
    let dir = temp_dir("info");
    let out = generate(&dir, &["a red circle", "--seed", "42", "--steps", "4", "-o", "img.png"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("img.png (seed 42)"));
    let (w, h, _) = pixels(&dir.join("img.png"));
    assert_eq!((w, h), (32, 32));
    let info = stride().arg("info").arg(dir.join("img.png")).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.starts_with("a red circle\nSteps: 4, Sampler: dpmpp_2m, Schedule type: uniform, CFG scale: 3, Seed: 42, Size: 32x32"), "{text}");
    assert!(!dir.join("img.png.tmp").exists());
    // A --sigmas list is recorded as what ran: its step count, and no named schedule.
    let out = generate(&dir, &["a red circle", "--seed", "1", "--sigmas", "99,3,1,0.3,0", "-o", "s.png"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = stride().arg("info").arg(dir.join("s.png")).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("Steps: 4, Sampler: dpmpp_2m, Schedule type: custom,"), "{text}");
    assert!(text.contains("Sigmas: \"99,3,1,0.3,0\""), "{text}");
}

#[test]
fn same_seed_same_pixels_on_any_thread_count_and_from_metadata() {
    let dir = temp_dir("repro");
    let run = |name: &str, threads: &str| {
        let out = stride()
            .current_dir(&dir)
            .env("RAYON_NUM_THREADS", threads)
            .env("CANDLE_NUM_THREADS", threads)
            .args(["generate", "--quiet", "--model"])
            .arg(model())
            .args([
                "two green crosses",
                "--seed",
                "7",
                "--steps",
                "3",
                "--sampler",
                "dpmpp_2m_sde",
                "-o",
                name,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        pixels(&dir.join(name)).2
    };
    let a = run("a.png", "1");
    assert_eq!(a, run("b.png", "1"), "same seed twice");
    assert_eq!(a, run("c.png", "2"), "1 versus 2 threads");
    // The metadata names the weights folder (--weights-dir here), so --from alone finds it.
    let out = stride()
        .current_dir(&dir)
        .args(["generate", "--quiet", "two green crosses", "--seed", "7", "--steps", "3"])
        .args(["--sampler", "dpmpp_2m_sde", "-o", "d.png", "--weights-dir"])
        .arg(model())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pixels(&dir.join("d.png")).2, a);
    let from = |source: &str, extra: &[&str]| {
        stride()
            .current_dir(&dir)
            .args(["generate", "--quiet", "--from", source])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = from("d.png", &["-o", "again.png"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pixels(&dir.join("again.png")).2, a, "--from regenerates the same pixels");
    // --from never overwrites its source, and takes all its settings from it.
    for (extra, expected) in
        [(&["-o", "d.png"][..], "the one it regenerates"), (&["--seed", "8"][..], "--seed")]
    {
        let out = from("d.png", extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{extra:?}: {stderr}");
    }
    assert_eq!(pixels(&dir.join("d.png")).2, a);
    // An image made with a model folder that has since moved: --model says where it is now.
    let (before, after) = (dir.join("model-before"), dir.join("model-after"));
    std::fs::create_dir_all(&before).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(model().join(file), before.join(file)).unwrap();
    }
    let out = from("d.png", &["-o", "e.png", "--weights-dir", before.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&before, &after).unwrap();
    let out = from("e.png", &["-o", "f.png"]);
    assert!(!out.status.success(), "the folder e.png names is gone");
    let out = from("e.png", &["-o", "f.png", "--model", after.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pixels(&dir.join("f.png")).2, a, "--from with --model regenerates the same pixels");
}

/// Prompts that Latin-1 cannot hold are stored (as iTXt) and read back; prompts-file lines
/// that share a seed get numbered files instead of overwriting one another.
#[test]
fn unicode_prompts_are_kept_and_no_image_overwrites_another() {
    let dir = temp_dir("names");
    let prompt = "a red circle \u{2014} \u{201c}red\u{201d}";
    let out = generate(&dir, &[prompt, "--seed", "3", "--steps", "2", "-o", "u.png"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Words the model cannot read are named, as written.
    assert!(err.contains("does not know \"\u{2014}\", \"\u{201c}red\u{201d}\""), "{err}");
    let info = stride().arg("info").arg(dir.join("u.png")).output().unwrap();
    assert!(
        String::from_utf8_lossy(&info.stdout).starts_with(prompt),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );

    std::fs::write(dir.join("prompts.txt"), "a red circle\na blue square\n").unwrap();
    let out = generate(&dir, &["--prompts-file", "prompts.txt", "--seed", "5", "--steps", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prompt_of = |name: &str| {
        let info = stride().arg("info").arg(dir.join(name)).output().unwrap();
        String::from_utf8_lossy(&info.stdout).lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(prompt_of("stride-5-0.png"), "a red circle");
    assert_eq!(prompt_of("stride-5-1.png"), "a blue square");
    assert!(!dir.join("stride-5.png").exists());
}

#[test]
fn num_samples_use_consecutive_seeds_and_batching_does_not_change_images() {
    let dir = temp_dir("samples");
    let out = generate(
        &dir,
        &[
            "a large yellow triangle",
            "--seed",
            "100",
            "--steps",
            "3",
            "--num-samples",
            "3",
            "-o",
            "s-{seed}.png",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for seed in [100, 101, 102] {
        assert!(dir.join(format!("s-{seed}.png")).exists(), "seed {seed}");
    }
    let single =
        generate(&dir, &["a large yellow triangle", "--seed", "101", "--steps", "3", "-o", "one.png"]);
    assert!(single.status.success());
    assert_eq!(pixels(&dir.join("one.png")).2, pixels(&dir.join("s-101.png")).2);
}

#[test]
fn bad_input_is_a_one_line_error_and_leaves_no_png() {
    let dir = temp_dir("bad");
    let corrupt = temp_dir("corrupt-model");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model().join(f), corrupt.join(f)).unwrap();
    }
    std::fs::write(corrupt.join("model.safetensors"), b"garbage").unwrap();
    let corrupt_arg = corrupt.to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["", "-o", "x.png"], "empty"),
        (vec!["a red circle", "--sampler", "eulr", "-o", "x.png"], "dpmpp_2m_sde"),
        (vec!["a red circle", "--sigmas", "3,5,1,0", "-o", "x.png"], "sigma #1"),
        (vec!["a red circle", "--sigmas", "3,1,0", "--steps", "5", "-o", "x.png"], "--sigmas with 2 steps"),
        (vec!["a red circle", "--scheduler", "trailing", "-o", "x.png"], "discrete-time"),
        (vec!["a red circle", "-o", "/proc/nope/x.png"], "x.png"),
        (vec!["a red circle", "--steps", "0", "-o", "x.png"], "steps"),
        (vec!["a red circle", "--cfg-scale", "NaN", "-o", "x.png"], "cfg"),
        (vec!["a red circle", "--device", "cuda", "-o", "x.png"], "features cuda"),
        (vec!["a red circle", "--weights-dir", &corrupt_arg, "-o", "x.png"], "model.safetensors"),
    ];
    for (args, expect) in cases {
        let out = generate(&dir, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked") && err.trim().lines().count() == 1, "{args:?}: {err}");
        assert!(!dir.join("x.png").exists(), "{args:?} left a PNG");
    }
}

#[test]
fn adaptive_samplers_report_their_steps_and_respect_the_cap() {
    let dir = temp_dir("adaptive");
    for sampler in ["adaptive_sde", "dpm_adaptive"] {
        let out = generate(
            &dir,
            &["a red circle", "--seed", "1", "--sampler", sampler, "--rtol", "0.1", "-o", "a.png"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{sampler}: {err}");
        assert!(err.contains("NFE") || err.contains("nfe"), "{sampler} printed no NFE: {err}");
        let info = stride().arg("info").arg(dir.join("a.png")).output().unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("RTol: 0.1"));
        let capped = generate(&dir, &["a red circle", "--sampler", sampler, "--max-nfe", "4", "-o", "b.png"]);
        let err = String::from_utf8_lossy(&capped.stderr);
        assert!(
            capped.status.success() && err.contains("warning") && err.contains("sample 0"),
            "{sampler}: {err}"
        );
        // The cap is part of what made the image: recorded, and --from honours it.
        let info = stride().arg("info").arg(dir.join("b.png")).output().unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("Max NFE: 4"));
        let again = stride()
            .current_dir(&dir)
            .args(["generate", "--quiet", "--from", "b.png", "-o", "c.png"])
            .output();
        assert!(again.unwrap().status.success());
        assert_eq!(pixels(&dir.join("c.png")).2, pixels(&dir.join("b.png")).2, "{sampler}");
    }
    // dpm_adaptive's eta is its ancestral noise: it changes the image (it used to be ignored).
    let run = |eta: &str, name: &str| {
        let args =
            ["a red circle", "--seed", "1", "--sampler", "dpm_adaptive", "--rtol", "0.1", "--eta", eta];
        let out = generate(&dir, &[&args[..], &["-o", name]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        pixels(&dir.join(name)).2
    };
    assert_ne!(run("0", "eta0.png"), run("1", "eta1.png"));
    // A prompts-file line may choose another sampler: the command line's --rtol does not apply
    // to it, and is not recorded for it.
    let lines = ["a red circle", r#"{"prompt": "a blue square", "sampler": "euler", "steps": 2}"#];
    std::fs::write(dir.join("mixed.txt"), lines.join("\n")).unwrap();
    let out = generate(
        &dir,
        &["--prompts-file", "mixed.txt", "--sampler", "dpm_adaptive", "--rtol", "0.2", "-o", "m-{index}.png"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = |name: &str| {
        String::from_utf8_lossy(&stride().arg("info").arg(dir.join(name)).output().unwrap().stdout)
            .into_owned()
    };
    assert!(info("m-0.png").contains("Sampler: dpm_adaptive") && info("m-0.png").contains("RTol: 0.2"));
    assert!(info("m-1.png").contains("Steps: 2, Sampler: euler") && !info("m-1.png").contains("RTol"));
    // Settings a sampler would ignore are refused.
    for (args, expect) in [
        (&["--sampler", "adaptive_sde", "--eta", "1"][..], "adaptive_sde has no eta"),
        (&["--sampler", "dpm_adaptive", "--steps", "10"][..], "chooses its own steps"),
        (&["--sampler", "euler", "--rtol", "0.1"][..], "--rtol and --atol are for the adaptive samplers"),
        (&["--sampler", "heun", "--eta", "1"][..], "heun has no eta"),
        (&["--sampler", "adaptive_sde", "--scheduler", "karras"][..], "chooses its own steps"),
    ] {
        let out = generate(&dir, &[&["a red circle", "-o", "x.png"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn jsonl_prompt_lines_override_the_command_line_and_previews_are_written() {
    let dir = temp_dir("jsonl");
    let lines = [
        "# a comment, then a plain line and a JSON line",
        "a red circle",
        r#"{"prompt": "a blue square", "seed": 42, "steps": 3, "num_samples": 2, "sampler": "euler"}"#,
    ];
    std::fs::write(dir.join("prompts.txt"), lines.join("\n")).unwrap();
    let out = generate(
        &dir,
        &[
            "--prompts-file",
            "prompts.txt",
            "--seed",
            "5",
            "--steps",
            "4",
            "--preview-every",
            "2",
            "-o",
            "{index}.png",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = |name: &str| {
        let out = stride().arg("info").arg(dir.join(name)).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = info("0.png");
    assert!(
        first.starts_with("a red circle\n") && first.contains("Steps: 4") && first.contains("Seed: 5"),
        "{first}"
    );
    assert!(first.contains("Sampler: dpmpp_2m"), "{first}");
    for (name, seed) in [("1.png", 42), ("2.png", 43)] {
        let text = info(name);
        assert!(text.starts_with("a blue square\n"), "{text}");
        assert!(text.contains("Steps: 3") && text.contains("Sampler: euler"), "{text}");
        assert!(text.contains(&format!("Seed: {seed}")), "{text}");
    }
    // Previews every 2 steps, not at the last step (that is the image itself).
    assert!(dir.join("0-step2.png").exists() && !dir.join("0-step4.png").exists());
    assert!(dir.join("1-step2.png").exists() && !dir.join("1-step3.png").exists());

    std::fs::write(dir.join("bad.txt"), "a red circle\n{\"prompt\": \"a cross\", \"colour\": \"red\"}\n")
        .unwrap();
    let out = generate(&dir, &["--prompts-file", "bad.txt"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("line 2") && stderr.contains("colour"), "{stderr}");
}

/// `stride eval` reads the held-out prompts of the model it is given (its folder's
/// heldout_prompts.txt, else the shapes world's list), and refuses a prompt the model cannot
/// read before sampling anything.
#[test]
fn eval_reads_the_model_folders_prompts_and_checks_them_first() {
    let dir = temp_dir("eval-prompts");
    let eval = |extra: &[&str]| {
        stride()
            .current_dir(&dir)
            .args(["eval", "--steps", "1", "--model"])
            .arg(model())
            .args(extra)
            .output()
            .unwrap()
    };
    // A run folder's export has no prompts file: the shapes world's held-out list stands in.
    let out = eval(&["--limit", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("has no heldout_prompts.txt"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ShapesEval on 2 held-out prompts"));
    std::fs::write(model().join("heldout_prompts.txt"), "a red circle\na blue square\n").unwrap();
    let out = eval(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("ShapesEval on 2 held-out prompts"), "{stdout}");
    std::fs::remove_file(model().join("heldout_prompts.txt")).unwrap();
    // Four full phrases parse (the grammar allows up to nine) but exceed the model's 31 words.
    let cells = ["top left", "top right", "bottom left", "bottom right"];
    let long = cells.map(|cell| format!("a large red circle in the {cell}")).join(" and ");
    std::fs::write(dir.join("p.txt"), format!("a red circle\n{long}\n")).unwrap();
    let out = eval(&["--prompts", "p.txt"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("prompt 2") && err.contains("at most 31"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ShapesEval"), "it sampled before checking");
}
