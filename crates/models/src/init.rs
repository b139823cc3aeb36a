//! Reproducible parameter initialisation: candle's CPU random generator cannot be seeded, so
//! models trained here (tiny-shapes, the step policy) draw each parameter from its own
//! generator seeded by `(seed, name)`.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use stride_solvers::TorchGenerator;

/// A [`VarBuilder`] creating every parameter as a `Var` in `varmap`, initialised from `seed`
/// and the parameter's name (so a fresh run is reproducible whatever the creation order).
pub fn seeded(varmap: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    let backend = SeededInit { varmap: varmap.clone(), seed };
    VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
}

/// A VarBuilder backend that creates each parameter as a `Var` in `varmap`, drawn from a
/// generator seeded by `(seed, name)`: normal initialisers as asked; uniform ones as a normal
/// of the same mean and variance; Kaiming as LeCun normal (std 1/sqrt(fan_in)).
struct SeededInit {
    varmap: VarMap,
    seed: u64,
}

impl candle_nn::var_builder::SimpleBackend for SeededInit {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = shape.elem_count();
        let name_hash =
            name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut gen = TorchGenerator::new(self.seed ^ name_hash);
        let normal = |gen: &mut TorchGenerator, mean: f64, std: f64| -> Vec<f32> {
            gen.randn(n).iter().map(|z| (mean + std * f64::from(*z)) as f32).collect()
        };
        let values = match init {
            candle_nn::Init::Const(v) => vec![v as f32; n],
            candle_nn::Init::Randn { mean, stdev } => normal(&mut gen, mean, stdev),
            candle_nn::Init::Uniform { lo, up } => {
                normal(&mut gen, 0.5 * (lo + up), (up - lo) / 12f64.sqrt())
            }
            candle_nn::Init::Kaiming { .. } => {
                let dims = shape.dims();
                let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
                normal(&mut gen, 0.0, 1.0 / (fan_in as f64).sqrt())
            }
        };
        let tensor = Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        self.varmap.data().lock().expect("varmap lock").insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name} must be created with a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().expect("varmap lock").contains_key(name)
    }
}
