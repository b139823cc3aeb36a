//! Schedule files: round trips, validation with clear errors, refusal for another model or
//! solver; aggregation and interpolation.

use candle_core::{DType, Device};
use stride_distill::file::{
    CalibrationInfo, Costs, ModelInfo, SampleRecord, SearchInfo, TeacherInfo, FORMAT,
};
use stride_distill::{
    aggregate, distill, interpolate, Aggregate, Config, Intended, Provenance, ScheduleFile, Shared,
};
use stride_models::GaussianMixture;
use stride_solvers::{Denoiser, NoiseSchedule, NoiseSource, Sampler, SamplerKind, Sigmas, TorchNoise};

fn file(sigmas: Vec<f64>) -> ScheduleFile {
    ScheduleFile {
        format: FORMAT.into(),
        stride_version: "0.1.0".into(),
        model: ModelInfo {
            id: "tiny-shapes".into(),
            hash: "abc123".into(),
            parameterization: "flow_velocity".into(),
        },
        solver: "dpmpp_2m".into(),
        nfe: sigmas.len() - 1,
        sigmas: sigmas.clone(),
        teacher: TeacherInfo { solver: "euler".into(), steps: 200, grid: "uniform".into() },
        search: SearchInfo { method: "oss".into(), distance: "x0".into(), aggregate: "median".into() },
        calibration: CalibrationInfo { hash: "prompts-1".into(), count: 1 },
        costs: Costs { per_sample_mean: 0.01, aggregate: Some(0.02) },
        compute: None,
        per_sample: vec![SampleRecord { sigmas, cost: 0.01 }],
    }
}

fn flow_file() -> ScheduleFile {
    file(vec![f64::INFINITY, 3.0, 1.0, 0.25, 0.0])
}

fn error_of(text: &str) -> String {
    ScheduleFile::from_json(text, "test.json").unwrap_err().to_string()
}

#[test]
fn round_trip_keeps_everything_including_a_leading_inf() {
    let f = flow_file();
    let text = f.to_json();
    assert!(text.contains("\"inf\""), "{text}");
    assert_eq!(ScheduleFile::from_json(&text, "test.json").unwrap(), f);

    let path = std::env::temp_dir().join(format!("stride-distill-test-{}.json", std::process::id()));
    f.write(&path).unwrap();
    let back = ScheduleFile::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(back, f);
    assert_eq!(back.sigmas().unwrap().steps(), 4);
}

#[test]
fn non_monotonic_sigmas_are_refused_with_their_position() {
    let text = file(vec![14.6, 3.5, 7.8, 0.0]).to_json();
    let err = error_of(&text);
    assert!(
        err.contains("test.json") && err.contains("sigma #2") && err.contains("strictly decrease"),
        "{err}"
    );
}

#[test]
fn nan_and_null_sigmas_are_refused_clearly() {
    let good = file(vec![14.6, 3.5, 0.0]).to_json();
    let nan = good.replacen("3.5", "NaN", 1);
    let err = error_of(&nan);
    assert!(err.contains("NaN") && err.contains("not JSON numbers"), "{err}");
    let null = good.replacen("3.5", "null", 1);
    let err = error_of(&null);
    assert!(err.contains("sigma #1 is null"), "{err}");
    let late_inf = good.replacen("3.5", "\"inf\"", 1);
    let err = error_of(&late_inf);
    assert!(err.contains("sigma #1 is inf"), "{err}");
}

#[test]
fn inconsistent_or_unknown_fields_are_refused() {
    let mut f = file(vec![14.6, 3.5, 0.0]);
    f.nfe = 3;
    assert!(error_of(&f.to_json()).contains("nfe is 3, but its sigmas make 2 steps"));
    let mut f = file(vec![14.6, 3.5, 0.0]);
    f.solver = "dpmpp_9m".into();
    assert!(error_of(&f.to_json()).contains("unknown sampler `dpmpp_9m`"));
    let mut f = file(vec![14.6, 3.5, 0.0]);
    f.format = "something-else".into();
    assert!(error_of(&f.to_json()).contains("expected `stride-schedule/1`"));
    assert!(error_of("{\"format\": 1").contains("not a valid schedule"));
}

#[test]
fn another_model_or_solver_is_refused_unless_forced() {
    let f = flow_file();
    let ok = Intended { model_id: "tiny-shapes", model_hash: "abc123", solver: "dpmpp_2m" };
    assert!(f.check("s.json", &ok, false).unwrap().is_empty());

    let other_model = Intended { model_hash: "def456", ..ok };
    let err = f.check("s.json", &other_model, false).unwrap_err().to_string();
    assert!(
        err.contains("model `tiny-shapes` (hash abc123)")
            && err.contains("def456")
            && err.contains("--force"),
        "{err}"
    );

    let other_solver = Intended { solver: "euler", ..ok };
    let err = f.check("s.json", &other_solver, false).unwrap_err().to_string();
    assert!(err.contains("solver `dpmpp_2m`, not for `euler`"), "{err}");

    // Without hashes the id decides; forced, the mismatches come back as warnings.
    let unhashed = Intended { model_id: "sd15", model_hash: "", solver: "euler" };
    let warnings = f.check("s.json", &unhashed, true).unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn a_distilled_file_validates_and_interpolates() {
    let model = GaussianMixture::synthetic(4, 2, NoiseSchedule::edm()).unwrap();
    let mut config = Config::new(model.schedule(), Sampler::new(SamplerKind::Euler), 3).unwrap();
    config.grid = stride_distill::teacher::default_grid(model.schedule(), 12).unwrap();
    let noise = TorchNoise::new(&[5, 6, 7]).sample(&(3, 4).into(), DType::F64, &Device::Cpu).unwrap();
    let distilled = distill(&Shared(&model), &noise, &config, |_| {}).unwrap();
    let provenance = Provenance {
        model_id: "gmm".into(),
        model_hash: String::new(),
        parameterization: model.parameterization(),
        calibration_hash: "seeds-5".into(),
    };
    let f = ScheduleFile::new(&distilled.samples, &config, &provenance, Aggregate::Median, None).unwrap();
    assert_eq!((f.nfe, f.calibration.count, f.teacher.steps), (3, 3, 12));
    assert_eq!((f.solver.as_str(), f.teacher.grid.as_str()), ("euler", "exponential"));
    let back = ScheduleFile::from_json(&f.to_json(), "gmm.json").unwrap();
    assert_eq!(back, f);
    let five = back.sigmas_for(5).unwrap();
    assert_eq!(five.steps(), 5);
    assert_eq!((five.first(), five.last()), (f.sigmas[0], 0.0));
}

#[test]
fn aggregation_is_per_index_and_keeps_the_order() {
    let a = vec![10.0, 5.0, 1.0, 0.0];
    let b = vec![10.0, 4.0, 2.0, 0.0];
    let c = vec![10.0, 3.0, 0.5, 0.0];
    let median = aggregate(&[a.clone(), b.clone(), c.clone()], Aggregate::Median).unwrap();
    assert_eq!(median.as_slice(), &[10.0, 4.0, 1.0, 0.0]);
    let even = aggregate(&[a.clone(), b.clone()], Aggregate::Median).unwrap();
    assert_eq!(even.as_slice(), &[10.0, 4.5, 1.5, 0.0]);
    let mean = aggregate(&[a.clone(), b, c], Aggregate::Mean).unwrap();
    assert_eq!(mean.as_slice(), &[10.0, 4.0, 3.5 / 3.0, 0.0]);
    let flow =
        aggregate(&[vec![f64::INFINITY, 2.0, 0.0], vec![f64::INFINITY, 1.0, 0.0]], Aggregate::Mean).unwrap();
    assert_eq!(flow.as_slice(), &[f64::INFINITY, 1.5, 0.0]);
    let err = aggregate(&[a, vec![1.0, 0.0]], Aggregate::Mean).unwrap_err().to_string();
    assert!(err.contains("same step count"), "{err}");
}

#[test]
fn interpolation_is_log_linear_and_keeps_the_ends() {
    let s = Sigmas::new(vec![8.0, 2.0, 0.5, 0.0]).unwrap();
    // The nonzero part is geometric (ratio 1/4): the midpoints in log sigma halve it.
    let up = interpolate(&s, 5).unwrap();
    let expected = [8.0, 4.0, 2.0, 1.0, 0.5, 0.0];
    assert!(up.as_slice().iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12), "{up}");
    assert_eq!(up.steps(), 5);
    assert_eq!(interpolate(&s, 3).unwrap(), s);

    let flow = Sigmas::new(vec![f64::INFINITY, 4.0, 1.0, 0.0]).unwrap();
    let more = interpolate(&flow, 4).unwrap();
    assert_eq!(more.as_slice(), &[f64::INFINITY, 4.0, 2.0, 1.0, 0.0]);
    assert!(interpolate(&Sigmas::new(vec![f64::INFINITY, 1.0, 0.0]).unwrap(), 4).is_err());
}
