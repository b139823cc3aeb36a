//! `--device cpu|cuda|metal`: a clear error when the binary was built without the feature.

use anyhow::Result;
use candle_core::Device;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU (CANDLE_NUM_THREADS threads, default all cores).
    Cpu,
    /// The first NVIDIA GPU (a build with `--features cuda`).
    Cuda,
    /// The Apple GPU (a build with `--features metal`).
    Metal,
}

impl DeviceArg {
    pub fn name(self) -> &'static str {
        match self {
            DeviceArg::Cpu => "cpu",
            DeviceArg::Cuda => "cuda",
            DeviceArg::Metal => "metal",
        }
    }

    pub fn open(self) -> Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda if candle_core::utils::cuda_is_available() => Ok(Device::new_cuda(0)?),
            DeviceArg::Cuda => anyhow::bail!("--device cuda needs a build with `--features cuda`"),
            DeviceArg::Metal if candle_core::utils::metal_is_available() => Ok(Device::new_metal(0)?),
            DeviceArg::Metal => anyhow::bail!("--device metal needs a build with `--features metal` (macOS)"),
        }
    }
}
