//! tiny-shapes plumbing: tokenizer, loading (and its errors), training determinism and resume
//! (on a tiny random configuration), and per-row prompt gathering (on the committed weights,
//! whatever their quality).

use candle_core::{Device, Tensor};
use stride_models::tiny_shapes::train::{TrainConfig, Trainer};
use stride_models::tiny_shapes::{tokenizer, Config};
use stride_models::{ModelError, TinyShapes};
use stride_solvers::Denoiser;

fn tiny_config(steps: u64) -> TrainConfig {
    TrainConfig {
        model: Config {
            vocab_size: stride_shapes::VOCABULARY.len() + 3,
            text_dim: 32,
            text_layers: 1,
            text_heads: 2,
            dim: 32,
            depth: 1,
            heads: 2,
            patch: 4,
            levels: vec![8],
            ..Config::default()
        },
        steps,
        batch_size: 4,
        warmup: 2,
        ..TrainConfig::default()
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stride-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn tokenizer_round_trip_and_unknown_words() {
    let tok = tokenizer::build(&stride_shapes::VOCABULARY).unwrap();
    let ids = tokenizer::encode(&tok, "A small Red circle, in the top left.", 32).unwrap();
    assert_eq!(ids[0], tokenizer::BOS);
    let words: Vec<String> = ids[1..].iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(words, ["a", "small", "red", "circle", "in", "the", "top", "left"]);
    let unknown = tokenizer::encode(&tok, "a purple circle", 32).unwrap();
    assert_eq!(unknown[2], tokenizer::UNK, "unknown words map to [UNK]");
    let named = tokenizer::unknown_words(&tok, "A red circle above, a Blue square nearby.").unwrap();
    assert_eq!(named, ["above", "nearby"], "unknown words are named as written");
    assert_eq!(tokenizer::encode(&tok, "", 32).unwrap(), vec![tokenizer::BOS], "the empty prompt is [BOS]");
    let long = vec!["red"; 40].join(" ");
    let err = tokenizer::encode(&tok, &long, 32).unwrap_err().to_string();
    assert!(err.contains("40 words") && err.contains("31"), "{err}");
    // Saved and reloaded, it encodes the same.
    let dir = temp_dir("tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let again = tokenizer::load(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(
        tokenizer::encode(&again, "two green crosses", 32).unwrap(),
        tokenizer::encode(&tok, "two green crosses", 32).unwrap()
    );
}

#[test]
fn exported_model_loads_and_bad_files_are_clear_errors() {
    let dir = temp_dir("export");
    let trainer = Trainer::new(tiny_config(1), &Device::Cpu).unwrap();
    trainer.export(&dir).unwrap();
    let model = TinyShapes::load(&dir, &Device::Cpu).unwrap();
    let err = model.denoiser(&["a red circle", "  "], 4.0).err().unwrap().to_string();
    assert!(err.contains("prompt 2 is empty"), "{err}");
    assert!(model.denoiser(&["a red circle"], f64::NAN).is_err());

    let missing = TinyShapes::load(&dir.join("nope"), &Device::Cpu).err().unwrap().to_string();
    assert!(missing.contains("config.json"), "{missing}");

    let corrupt = temp_dir("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), corrupt.join(f)).unwrap();
    }
    std::fs::write(corrupt.join("model.safetensors"), b"not safetensors").unwrap();
    let err = TinyShapes::load(&corrupt, &Device::Cpu).err().unwrap();
    assert!(matches!(&err, ModelError::File { path, .. } if path.ends_with("model.safetensors")), "{err}");

    // A config that does not match the weights.
    std::fs::copy(dir.join("model.safetensors"), corrupt.join("model.safetensors")).unwrap();
    let mut config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config.dim = 64;
    config.heads = 4;
    std::fs::write(corrupt.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    let err = TinyShapes::load(&corrupt, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("do not fit config.json"), "{err}");

    config.heads = 3; // 64 is not divisible by 3
    std::fs::write(corrupt.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    let err = TinyShapes::load(&corrupt, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("divisible"), "{err}");
}

/// A run with `init` starts from that folder's weights (here: a 3-step run's export, whose
/// EMA differs from the seeded initialisation), even under another seed and with cross-attention
/// query positions toggled (they add no parameters); weights of another architecture are
/// refused by name.
#[test]
fn a_fine_tune_starts_from_the_init_folders_weights() {
    let dir = temp_dir("init");
    let mut source = Trainer::new(tiny_config(3), &Device::Cpu).unwrap();
    for _ in 0..3 {
        source.train_step().unwrap();
    }
    source.export(&dir).unwrap();
    let exported = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();

    let mut config = tiny_config(5);
    config.seed = 7;
    config.model.query_positions = !config.model.query_positions;
    config.init = Some(dir.clone());
    let tuned = Trainer::new(config.clone(), &Device::Cpu).unwrap();
    let fresh = Trainer::new(TrainConfig { init: None, ..config.clone() }, &Device::Cpu).unwrap();
    let mut differs_from_seeded = false;
    for ((name, value), (_, seeded)) in tuned.parameters().iter().zip(fresh.parameters()) {
        let diff = (value - &exported[name]).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} is not the init folder's");
        let moved = (value - &seeded).unwrap().abs().unwrap().max_all().unwrap();
        differs_from_seeded |= moved.to_scalar::<f32>().unwrap() > 0.0;
    }
    assert!(differs_from_seeded, "the init weights equal the seeded ones: the test proves nothing");

    config.model.levels = vec![8, 8];
    let err = Trainer::new(config, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.safetensors") && err.contains("model config"), "{err}");
}

/// Two fresh runs are identical, and a run checkpointed at step 2 and resumed ends exactly
/// where an uninterrupted 4-step run does (bit for bit: same weights, moments and EMA).
#[test]
fn training_is_deterministic_and_resumes_bit_identically() {
    let params = |t: &Trainer| -> Vec<Vec<f32>> {
        t.parameters().iter().map(|(_, p)| p.flatten_all().unwrap().to_vec1().unwrap()).collect()
    };
    let mut straight = Trainer::new(tiny_config(4), &Device::Cpu).unwrap();
    let losses: Vec<f32> = (0..4).map(|_| straight.train_step().unwrap()).collect();
    assert!(losses.iter().all(|l| l.is_finite()));

    let dir = temp_dir("resume");
    let mut first = Trainer::new(tiny_config(4), &Device::Cpu).unwrap();
    for _ in 0..2 {
        first.train_step().unwrap();
    }
    first.save_checkpoint(&dir).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir, None, &Device::Cpu).unwrap();
    assert_eq!(resumed.step, 2);
    let resumed_losses: Vec<f32> = (0..2).map(|_| resumed.train_step().unwrap()).collect();
    assert_eq!(resumed_losses, losses[2..]);
    assert_eq!(params(&resumed), params(&straight));
}

/// A kill between the checkpoint's two renames leaves new weights beside the previous
/// `checkpoint.json`: the step stored with the weights wins, so the resumed run still matches.
#[test]
fn a_checkpoint_json_behind_its_weights_resumes_from_the_weights_step() {
    let dir = temp_dir("renames");
    let mut run = Trainer::new(tiny_config(4), &Device::Cpu).unwrap();
    run.train_step().unwrap();
    run.save_checkpoint(&dir).unwrap();
    let behind = std::fs::read(dir.join("checkpoint.json")).unwrap();
    run.train_step().unwrap();
    run.save_checkpoint(&dir).unwrap();
    std::fs::write(dir.join("checkpoint.json"), behind).unwrap();
    let mut resumed = Trainer::resume(&dir, None, &Device::Cpu).unwrap();
    assert_eq!(resumed.step, 2);
    assert_eq!(resumed.train_step().unwrap(), run.train_step().unwrap());
}

/// A batch mixing prompts through `Guided::rows` predicts what a denoiser built for those
/// prompts in that order does (the text encodings are gathered, not recomputed). Tolerance
/// 1e-5: the two encode different padding lengths, which the mask makes irrelevant up to
/// float rounding.
#[test]
fn gathered_rows_match_a_denoiser_built_for_them() {
    let model = TinyShapes::load(&TinyShapes::default_dir(), &Device::Cpu).unwrap();
    let prompts = ["a red circle", "two blue squares on a white background", "a cross"];
    for cfg in [1.0, 3.0] {
        let all = model.denoiser(&prompts, cfg).unwrap();
        let picked = all.rows(&[2, 0, 0, 1]).unwrap();
        let direct = model.denoiser(&[prompts[2], prompts[0], prompts[0], prompts[1]], cfg).unwrap();
        let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu).unwrap();
        let sigmas = [5.0, 1.0, 0.2, 1.0];
        let a = picked.predict(&x, &sigmas).unwrap();
        let b = direct.predict(&x, &sigmas).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "cfg {cfg}: gathered rows differ by {diff}");
        assert!(all.rows(&[3]).is_err(), "an out-of-range prompt index must be an error");
    }
}

/// The whole network's gradients, computed with the fused f32 CPU kernels, equal those of
/// candle's composed ops on the same weights in f64 (where the kernels are bypassed), for both
/// bodies: the kernels are right where the network uses them (shapes, strides, threads).
/// Tolerance: 1e-4 of each parameter's largest gradient (f32 rounding; measured about 1e-5).
#[test]
fn fused_kernels_give_the_composed_gradients_in_the_whole_network() {
    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};
    use stride_models::tiny_shapes::net::{Arch, Net};
    let dev = Device::Cpu;
    let tok = tokenizer::build(&stride_shapes::VOCABULARY).unwrap();
    let world = stride_shapes::World::new(0);
    let samples: Vec<_> = (0..6).map(|i| world.sample(i)).collect();
    let prompts: Vec<&str> = samples.iter().map(|s| s.prompt.text.as_str()).collect();
    let (ids, mask) = tokenizer::encode_batch(&tok, &prompts, 32, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (6, 3, 32, 32), &dev).unwrap();
    let target = Tensor::randn(0f32, 1.0, (6, 3, 32, 32), &dev).unwrap();
    let t = Tensor::rand(0f32, 1.0, 6, &dev).unwrap();
    for arch in [Arch::Unet, Arch::Dit] {
        let config = Config { vocab_size: 38, text_dim: 32, dim: 32, depth: 2, arch, ..tiny_config(1).model };
        let (vm32, vm64) = (VarMap::new(), VarMap::new());
        let net32 = Net::new(&config, stride_models::init::seeded(&vm32, 5, &dev)).unwrap();
        let net64 = Net::new(&config, VarBuilder::from_varmap(&vm64, DType::F64, &dev)).unwrap();
        for (name, var) in vm32.data().lock().unwrap().iter() {
            // Perturbed, so the zero-initialised branches pass gradients on.
            var.set(&(var.as_tensor() + Tensor::randn(0f32, 0.1, var.shape(), &dev).unwrap()).unwrap())
                .unwrap();
            vm64.data().lock().unwrap()[name].set(&var.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        }
        let grads = |net: &Net, dtype: DType| {
            let text = net.text.forward(&ids, &mask).unwrap();
            let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let pred = net.forward(&cast(&x), &cast(&t), &text, &mask).unwrap();
            (pred - cast(&target)).unwrap().sqr().unwrap().mean_all().unwrap().backward().unwrap()
        };
        let (g32, g64) = (grads(&net32, DType::F32), grads(&net64, DType::F64));
        for (name, v32) in vm32.data().lock().unwrap().iter() {
            let v64 = vm64.data().lock().unwrap()[name].clone();
            let a = g32.get(v32.as_tensor()).unwrap_or_else(|| panic!("{arch:?} {name}: no fused gradient"));
            let b = g64.get(v64.as_tensor()).unwrap().to_dtype(DType::F32).unwrap();
            let max = |t: &Tensor| {
                t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
            };
            let (diff, scale) = (max(&(a - &b).unwrap()), max(&b));
            assert!(
                diff <= 1e-4 * scale.max(1e-8),
                "{arch:?} {name}: gradients differ by {diff:e} (max {scale:e})"
            );
        }
    }
}
