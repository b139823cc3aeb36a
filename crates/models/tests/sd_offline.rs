//! Stable Diffusion without the Hub: a tiny random UNet and VAE written in the diffusers
//! layout are loaded through the code that loads SD 1.5, sampled for two solver steps and
//! decoded; the loader's UNet is checked against candle's own on the same weights; candle's
//! CLIP runs on random weights and token ids; the CLIP tokenizer built from a folder's
//! vocab.json and merges.txt matches transformers'; the offline and missing-file errors name
//! what was needed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::stable_diffusion::{clip, unet_2d, vae};
use stride_models::sd::{
    clip_tokenizer_from_bpe, ClipEncoder, ClipTokenizer, Conditioning, Hub, Layer, SdError, StableDiffusion,
    Variant,
};
use stride_solvers::{
    Denoiser, DiscreteSchedule, NoiseSchedule, Parameterization, Sampler, Scheduler, TorchNoise,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A fresh, empty folder under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stride-sd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const CROSS_DIM: usize = 768; // SD 1.5's CLIP width, so the random CLIP below feeds the UNet

/// The tiny UNet's `unet/config.json` (SD 1.5's layout with 32/64-channel blocks).
fn unet_json() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "cross_attention_dim": CROSS_DIM,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "sample_size": 8
    })
}

/// The same network as candle's config (written independently of the loader's parser).
fn unet_candle_config() -> unet_2d::UNet2DConditionModelConfig {
    let bc = |out_channels, use_cross_attn, attention_head_dim| unet_2d::BlockConfig {
        out_channels,
        use_cross_attn,
        attention_head_dim,
    };
    unet_2d::UNet2DConditionModelConfig {
        blocks: vec![bc(32, Some(1), 4), bc(64, None, 4)],
        center_input_sample: false,
        cross_attention_dim: CROSS_DIM,
        downsample_padding: 1,
        flip_sin_to_cos: true,
        freq_shift: 0.,
        layers_per_block: 1,
        mid_block_scale_factor: 1.,
        norm_eps: 1e-5,
        norm_num_groups: 32,
        sliced_attention_size: None,
        use_linear_projection: false,
    }
}

fn vae_config() -> vae::AutoEncoderKLConfig {
    vae::AutoEncoderKLConfig {
        block_out_channels: vec![32, 32, 64, 64],
        layers_per_block: 1,
        latent_channels: 4,
        norm_num_groups: 32,
        use_quant_conv: true,
        use_post_quant_conv: true,
    }
}

/// Writes a tiny random SD-1.5-layout model into `dir`; returns candle's UNet on the same
/// weights (the reference for the loader's UNet).
fn write_tiny_model(dir: &Path) -> Result<unet_2d::UNet2DConditionModel> {
    let dev = Device::Cpu;
    for sub in ["unet", "vae", "scheduler"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let unet_vars = VarMap::new();
    let reference = unet_2d::UNet2DConditionModel::new(
        VarBuilder::from_varmap(&unet_vars, DType::F32, &dev),
        4,
        4,
        false,
        unet_candle_config(),
    )?;
    save(&unet_vars, &dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    std::fs::write(dir.join("unet/config.json"), unet_json().to_string())?;

    let vae_vars = VarMap::new();
    vae::AutoEncoderKL::new(VarBuilder::from_varmap(&vae_vars, DType::F32, &dev), 3, 3, vae_config())?;
    save(&vae_vars, &dir.join("vae/diffusion_pytorch_model.safetensors"))?;
    let vae_json = serde_json::json!({
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [32, 32, 64, 64],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64
    });
    std::fs::write(dir.join("vae/config.json"), vae_json.to_string())?;
    let scheduler_json = serde_json::json!({
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "steps_offset": 1
    });
    std::fs::write(dir.join("scheduler/scheduler_config.json"), scheduler_json.to_string())?;
    Ok(reference)
}

/// Saves a VarMap's tensors with `candle_core::safetensors::save` (diffusers names).
fn save(vars: &VarMap, path: &Path) -> Result<()> {
    let data = vars.data().lock().map_err(|e| e.to_string())?;
    let tensors: HashMap<String, Tensor> =
        data.iter().map(|(name, var)| (name.clone(), var.as_tensor().clone())).collect();
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()))
}

#[test]
fn tiny_sd15_folder_loads_samples_two_steps_and_decodes() -> Result<()> {
    let dev = Device::Cpu;
    let dir = temp_dir("tiny-sd15");
    let reference = write_tiny_model(&dir)?;
    let hub = Hub::offline(dir.join("no-cache"));
    let sd = StableDiffusion::load_denoiser(Variant::Sd15, Some(&dir), &hub, &dev, DType::F32)?;
    assert_eq!(sd.prediction, Parameterization::Epsilon);
    // The folder's own size (UNet sample_size 8: 64 px) and spacing (none given: leading).
    let d = Variant::Sd15.defaults_in(Some(&dir));
    assert_eq!((d.width, d.height, d.scheduler), (64, 64, "leading"));
    // diffusers' AutoencoderKL scaling_factor for SD 1.x, used when vae/config.json omits it.
    assert_eq!(sd.latent_scale, 0.18215);
    assert_eq!(sd.downscale, 8);
    assert_eq!(sd.schedule, NoiseSchedule::Discrete(DiscreteSchedule::stable_diffusion()));

    // The loader's UNet is candle's network: same output at one timestep, and a per-sample
    // timestep equals separate calls. To f32 rounding, not bit for bit: the time embedding is
    // built here from a tensor of per-sample timesteps, in candle's from one broadcast scalar.
    // The last check shows the timestep matters by far more than that tolerance.
    let x = Tensor::randn(0f32, 1., (2, 4, 8, 8), &dev)?;
    let ctx = Tensor::randn(0f32, 1., (2, 77, CROSS_DIM), &dev)?;
    let ours = sd.unet.forward(&x, &[500.0, 500.0], &ctx, None)?;
    let theirs = reference.forward(&x, 500.0, &ctx)?;
    assert!(max_abs_diff(&ours, &theirs)? < 1e-5, "UNet differs from candle's");
    let mixed = sd.unet.forward(&x, &[100.0, 900.0], &ctx, None)?;
    let row1 = reference.forward(&x.narrow(0, 1, 1)?, 900.0, &ctx.narrow(0, 1, 1)?)?;
    assert!(max_abs_diff(&mixed.narrow(0, 1, 1)?, &row1)? < 1e-5, "per-sample timesteps");
    assert!(max_abs_diff(&mixed.narrow(0, 0, 1)?, &ours.narrow(0, 0, 1)?)? > 1e-4);

    // Two steps of DPM-Solver++(2M) with guidance (conditional + unconditional halves), then
    // the VAE.
    let (w, h) = (64, 64);
    let dims = sd.latent_dims(2, w, h)?;
    assert_eq!(dims, [2, 4, 8, 8]);
    let cond = Tensor::randn(0f32, 1., (2, 77, CROSS_DIM), &dev)?;
    let uncond = Tensor::randn(0f32, 1., (1, 77, CROSS_DIM), &dev)?.repeat((2, 1, 1))?;
    let conditioning =
        Conditioning { context: Tensor::cat(&[&cond, &uncond], 0)?, text_embeds: None, time_ids: None };
    let denoiser = sd.guided(conditioning, 7.5)?;
    let sigmas = Scheduler::Leading { steps_offset: 1 }.sigmas(denoiser.schedule(), 2)?;
    let sampler: Sampler = "dpmpp_2m".parse()?;
    let mut noise = TorchNoise::new(&[1, 2]);
    let x = sampler.initial_latent(&denoiser, &sigmas, &dims, &mut noise, &dev)?;
    let mut steps = 0;
    let latents = sampler.sample(&denoiser, x, &sigmas, &mut noise, |_| steps += 1)?;
    assert_eq!(steps, 2);
    assert_eq!(latents.dims(), &dims);
    assert!(all_finite(&latents)?);
    let images = sd.decode(&latents)?;
    assert_eq!(images.dims(), &[2, 3, h, w]);
    assert!(all_finite(&images)?);

    // Rows gathered from the guided conditioning predict what the same conditioning built in
    // that order does (the distiller's mixed batches). Same rows, same calls: exact.
    let picked = denoiser.rows(&[1, 1])?;
    let direct = sd.guided(
        Conditioning {
            context: Tensor::cat(&[&cond.narrow(0, 1, 1)?, &cond.narrow(0, 1, 1)?, &uncond], 0)?,
            text_embeds: None,
            time_ids: None,
        },
        7.5,
    )?;
    let x2 = Tensor::randn(0f32, 1., (2, 4, 8, 8), &dev)?;
    let (a, b) = (picked.predict(&x2, &[3.0, 0.5])?, direct.predict(&x2, &[3.0, 0.5])?);
    assert_eq!(max_abs_diff(&a, &b)?, 0.0, "gathered rows");
    assert!(denoiser.rows(&[2]).is_err());

    // Sizes the VAE cannot produce are refused.
    assert!(matches!(sd.latent_dims(1, 60, 64), Err(SdError::Size(_))));
    // Guidance needs both halves; embeddings must match the UNet's width.
    let half = Conditioning { context: cond.clone(), text_embeds: None, time_ids: None };
    assert!(sd.guided(half.clone(), 1.0).is_ok());
    let odd = Conditioning { context: cond.narrow(0, 0, 1)?, text_embeds: None, time_ids: None };
    assert!(sd.guided(odd, 7.5).is_err());

    // The same folder as a Hugging Face cache snapshot, read offline through the Hub path.
    let cache = dir.join("hub");
    let repo = cache.join("models--stable-diffusion-v1-5--stable-diffusion-v1-5");
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs/main"), "0123abcd")?;
    let snapshot = repo.join("snapshots/0123abcd");
    for sub in ["unet", "vae", "scheduler"] {
        std::fs::create_dir_all(snapshot.join(sub))?;
        for entry in std::fs::read_dir(dir.join(sub))? {
            let entry = entry?;
            std::fs::copy(entry.path(), snapshot.join(sub).join(entry.file_name()))?;
        }
    }
    let cached =
        StableDiffusion::load_denoiser(Variant::Sd15, None, &Hub::offline(&cache), &dev, DType::F32)?;
    let again = cached.unet.forward(&x_for(&dev)?, &[10.0], &ctx.narrow(0, 0, 1)?, None)?;
    let local = sd.unet.forward(&x_for(&dev)?, &[10.0], &ctx.narrow(0, 0, 1)?, None)?;
    assert_eq!(max_abs_diff(&again, &local)?, 0.0);

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn x_for(dev: &Device) -> Result<Tensor> {
    Ok(Tensor::ones((1, 4, 8, 8), DType::F32, dev)?)
}

/// A folder's variant and defaults come from its configs: a 2.x UNet is SD 2.1, or SD-Turbo
/// (1 step, no guidance) when its scheduler spaces steps `trailing`; the size is the UNet's
/// `sample_size` (64 latents: SD 2.1-base's 512 px, not 2.1's 768).
#[test]
fn folder_variant_and_defaults_come_from_its_configs() -> Result<()> {
    let dir = temp_dir("infer");
    for sub in ["unet", "scheduler"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let mut unet = unet_json();
    unet["cross_attention_dim"] = 1024.into();
    unet["sample_size"] = 64.into();
    std::fs::write(dir.join("unet/config.json"), unet.to_string())?;
    let spacing = |s: &str| {
        let json = serde_json::json!({ "timestep_spacing": s });
        std::fs::write(dir.join("scheduler/scheduler_config.json"), json.to_string())
    };
    spacing("leading")?;
    assert_eq!(Variant::infer(&dir)?, Variant::Sd21);
    let d = Variant::Sd21.defaults_in(Some(&dir));
    assert_eq!((d.width, d.steps, d.scheduler), (512, 30, "leading"));
    spacing("trailing")?;
    assert_eq!(Variant::infer(&dir)?, Variant::SdTurbo);
    let d = Variant::SdTurbo.defaults_in(Some(&dir));
    assert_eq!((d.width, d.steps, d.cfg_scale, d.scheduler), (512, 1, 1.0, "trailing"));
    Ok(())
}

#[test]
fn offline_errors_name_the_repository_the_file_and_the_way_out() {
    let dir = temp_dir("offline");
    let hub = Hub::offline(dir.join("empty-cache"));
    for variant in Variant::ALL {
        let err = StableDiffusion::load_denoiser(variant, None, &hub, &Device::Cpu, DType::F32)
            .err()
            .expect("no weights anywhere");
        let msg = err.to_string();
        assert!(matches!(err, SdError::Offline { .. }), "{msg}");
        assert!(msg.contains(variant.repo()), "{msg}");
        assert!(msg.contains("unet/config.json"), "{msg}");
        assert!(msg.contains("HF_HUB_OFFLINE") && msg.contains("--weights-dir"), "{msg}");
    }
    // A local folder without the files: the path, the repository and the file.
    let err = StableDiffusion::load_denoiser(Variant::Sdxl, Some(&dir), &hub, &Device::Cpu, DType::F32)
        .err()
        .expect("empty folder");
    let msg = err.to_string();
    assert!(matches!(err, SdError::MissingFile { .. }), "{msg}");
    assert!(msg.contains(&dir.join("unet/config.json").display().to_string()), "{msg}");
    assert!(msg.contains("stabilityai/stable-diffusion-xl-base-1.0"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A word-level stand-in for the CLIP BPE tokenizer (same special tokens and template).
fn toy_clip_tokenizer() -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
    use tokenizers::processors::template::TemplateProcessing;
    let words = ["!", "a", "red", "circle", "<|startoftext|>", "<|endoftext|>"];
    let vocab: HashMap<String, u32> =
        words.iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
    let model = WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("!".into()).build()?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
    let template = TemplateProcessing::builder()
        .try_single("<|startoftext|> $A <|endoftext|>")?
        .special_tokens(vec![("<|startoftext|>", 4), ("<|endoftext|>", 5)])
        .build()?;
    tokenizer.with_post_processor(Some(template));
    Ok(tokenizer)
}

/// The tokenizer built from a diffusers folder's `vocab.json` and `merges.txt` gives exactly
/// the ids of transformers' `CLIPTokenizer` (what diffusers loads) on the same files: a
/// 3000-merge cut of CLIP's BPE and prompts with capitals, runs of whitespace, contractions,
/// digits, accents, curly quotes, CJK, an emoji and a special token
/// (`tests/golden/clip_toy`, written by `scripts/golden/clip_tokenizer.py`).
#[test]
fn clip_tokenizer_from_vocab_and_merges_matches_transformers() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/clip_toy");
    let tokenizer = clip_tokenizer_from_bpe(&dir.join("vocab.json"), &dir.join("merges.txt"))?;
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let cases = expected["cases"].as_array().ok_or("no cases")?;
    assert!(cases.len() >= 9);
    for case in cases {
        let prompt = case["prompt"].as_str().ok_or("no prompt")?;
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .ok_or("no ids")?
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect();
        assert_eq!(tokenizer.encode(prompt, true)?.get_ids(), ids, "{prompt:?}");
    }
    Ok(())
}

#[test]
fn clip_tokenizer_pads_and_truncates_like_the_reference() -> Result<()> {
    let dev = Device::Cpu;
    let eos_pad = ClipTokenizer::new(toy_clip_tokenizer()?, 8, None)?;
    let ids = eos_pad.encode(&["a red circle"], &dev)?.to_vec2::<u32>()?;
    assert_eq!(ids, vec![vec![4, 1, 2, 3, 5, 5, 5, 5]]);
    let bang_pad = ClipTokenizer::new(toy_clip_tokenizer()?, 8, Some("!"))?;
    let ids = bang_pad.encode(&["a red circle", "a a a a a a a a a"], &dev)?.to_vec2::<u32>()?;
    assert_eq!(ids[0], vec![4, 1, 2, 3, 5, 0, 0, 0]);
    assert_eq!(ids[1], vec![4, 1, 1, 1, 1, 1, 1, 5], "truncation keeps the end token");
    // Nine words and the two special tokens in a context of 8: three tokens dropped.
    assert_eq!(bang_pad.dropped_tokens("a a a a a a a a a")?, 3);
    assert_eq!(bang_pad.dropped_tokens("a red circle")?, 0);
    Ok(())
}

/// candle's CLIP (SD 1.5's full-size text config, random weights) on random token ids: the
/// last and penultimate hidden states and the pooled projection have the shapes the UNet
/// and SDXL's text-time embedding read, and its output drives the tiny UNet.
#[test]
fn clip_text_encoder_on_random_tokens() -> Result<()> {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let last = ClipEncoder::new(vb.clone(), &clip::Config::v1_5(), Layer::Last, None)?;
    let penultimate = ClipEncoder::new(vb, &clip::Config::v1_5(), Layer::Penultimate, Some(CROSS_DIM))?;
    // Token ids below the end token (49407), which ends each row, then padding.
    let mut rows = Vec::new();
    for r in 0..2u32 {
        let mut row: Vec<u32> = (0..10).map(|i| (r * 7919 + i * 104_729) % 49_000 + 1).collect();
        row.insert(0, 49_406);
        row.push(49_407);
        row.resize(77, 49_407);
        rows.extend(row);
    }
    let ids = Tensor::from_vec(rows, (2, 77), &dev)?;
    let (hidden, pooled) = last.encode_ids(&ids)?;
    assert_eq!(hidden.dims(), &[2, 77, CROSS_DIM]);
    assert!(pooled.is_none());
    let (hidden2, pooled2) = penultimate.encode_ids(&ids)?;
    assert_eq!(hidden2.dims(), &[2, 77, CROSS_DIM]);
    let pooled2 = pooled2.ok_or("no pooled output")?;
    assert_eq!(pooled2.dims(), &[2, CROSS_DIM]);
    assert!(all_finite(&hidden)? && all_finite(&hidden2)? && all_finite(&pooled2)?);
    assert!(max_abs_diff(&hidden, &hidden2)? > 1e-3, "penultimate is not the last state");

    // The encoder's output conditions the tiny UNet through the loader.
    let dir = temp_dir("clip-unet");
    write_tiny_model(&dir)?;
    let sd = StableDiffusion::load_denoiser(
        Variant::Sd15,
        Some(&dir),
        &Hub::offline(dir.join("c")),
        &dev,
        DType::F32,
    )?;
    let denoiser = sd.guided(Conditioning { context: hidden, text_embeds: None, time_ids: None }, 1.0)?;
    let out = denoiser.predict(&Tensor::ones((2, 4, 8, 8), DType::F32, &dev)?, &[3.0, 0.5])?;
    assert_eq!(out.dims(), &[2, 4, 8, 8]);
    assert!(all_finite(&out)?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A tiny SDXL-shaped UNet (down blocks plain then cross-attention, two transformer layers,
/// `text_time` conditioning): loaded as SDXL, its pooled embedding and size conditioning
/// change the output, and two guided steps run.
#[test]
fn tiny_sdxl_text_time_conditioning() -> Result<()> {
    let dev = Device::Cpu;
    let dir = temp_dir("tiny-sdxl");
    for sub in ["unet", "vae"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let unet_json = serde_json::json!({
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "layers_per_block": 1,
        "attention_head_dim": [2, 4],
        "transformer_layers_per_block": [1, 2],
        "cross_attention_dim": 48,
        "use_linear_projection": true,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + 16
    });
    let path = dir.join("unet/config.json");
    std::fs::write(&path, unet_json.to_string())?;
    let (config, text_time) = stride_models::sd::UnetJson::read(&path)?.to_candle()?;
    let vars = VarMap::new();
    stride_models::sd::Unet::new(VarBuilder::from_varmap(&vars, DType::F32, &dev), 4, 4, &config, text_time)?;
    save(&vars, &dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    let vae_vars = VarMap::new();
    vae::AutoEncoderKL::new(VarBuilder::from_varmap(&vae_vars, DType::F32, &dev), 3, 3, vae_config())?;
    save(&vae_vars, &dir.join("vae/diffusion_pytorch_model.safetensors"))?;
    let vae_json = serde_json::json!({
        "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "scaling_factor": 0.13025
    });
    std::fs::write(dir.join("vae/config.json"), vae_json.to_string())?;

    let hub = Hub::offline(dir.join("no-cache"));
    // Loading it as SD 1.5 is refused: the UNet has SDXL's conditioning.
    assert!(StableDiffusion::load_denoiser(Variant::Sd15, Some(&dir), &hub, &dev, DType::F32).is_err());
    let sd = StableDiffusion::load_denoiser(Variant::Sdxl, Some(&dir), &hub, &dev, DType::F32)?;
    assert_eq!(sd.latent_scale, 0.13025);

    let ctx = Tensor::randn(0f32, 1., (2, 77, 48), &dev)?;
    let pooled = Tensor::randn(0f32, 1., (2, 16), &dev)?;
    let ids = |side: f32| Tensor::from_vec([side, side, 0., 0., side, side].repeat(2), (2, 6), &dev);
    let x = Tensor::randn(0f32, 1., (2, 4, 8, 8), &dev)?;
    let (ids64, ids1024) = (ids(64.)?, ids(1024.)?);
    let at = |time_ids: &Tensor| {
        let added = stride_models::sd::Added { text_embeds: &pooled, time_ids };
        sd.unet.forward(&x, &[400.0, 400.0], &ctx, Some(added))
    };
    assert!(max_abs_diff(&at(&ids64)?, &at(&ids1024)?)? > 1e-5, "size conditioning has no effect");
    assert!(sd.unet.forward(&x, &[400.0, 400.0], &ctx, None).is_err());

    // Guided: 1 sample, conditional + unconditional rows.
    let cond = Conditioning {
        context: ctx.clone(),
        text_embeds: Some(pooled.clone()),
        time_ids: Some(ids64.clone()),
    };
    let denoiser = sd.guided(cond, 5.0)?;
    let sigmas = Scheduler::Trailing.sigmas(denoiser.schedule(), 2)?;
    let sampler: Sampler = "euler".parse()?;
    let mut noise = TorchNoise::new(&[3]);
    let dims = sd.latent_dims(1, 64, 64)?;
    let x = sampler.initial_latent(&denoiser, &sigmas, &dims, &mut noise, &dev)?;
    let latents = sampler.sample(&denoiser, x, &sigmas, &mut noise, |_| {})?;
    let images = sd.decode(&latents)?;
    assert_eq!(images.dims(), &[1, 3, 64, 64]);
    assert!(all_finite(&images)?);
    // Without guidance the pooled rows must match the samples.
    let bad =
        Conditioning { context: ctx, text_embeds: Some(pooled.narrow(0, 0, 1)?), time_ids: Some(ids64) };
    assert!(sd.guided(bad, 1.0).is_err());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
