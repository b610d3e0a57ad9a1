//! `hymba-eval init` and `hymba-eval params`: write a randomly initialised checkpoint of any
//! architecture in the HF layout, and load a checkpoint directory to count its parameters
//! (e.g. 1,522,797,824 for the `nvidia/Hymba-1.5B` layout).

use std::path::PathBuf;
use std::time::Instant;

use hymba::weights::{SaveOptions, inspect_pretrained};
use hymba::{BackendRunner, Hymba, HymbaConfig, HymbaError};

/// Write a random checkpoint (spec §1.3 initialisation) of `config` to `out`.
#[derive(Debug, Clone)]
pub struct InitJob {
    /// The architecture.
    pub config: HymbaConfig,
    /// Seed of the random weights.
    pub seed: u64,
    /// The checkpoint directory to write.
    pub out: PathBuf,
    /// Dtype and tokenizer.
    pub options: SaveOptions,
}

/// What [`InitJob`] wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Parameters of the model written.
    pub params: usize,
    /// Seconds to initialise and write.
    pub secs: f64,
}

impl BackendRunner for InitJob {
    type Output = Result<InitReport, HymbaError>;

    fn run<B: hymba::HymbaBackend>(self, device: B::Device) -> Self::Output {
        let start = Instant::now();
        B::seed(&device, self.seed);
        let model = Hymba::<B>::new(&self.config, &device)?;
        hymba::save_pretrained(&model, &self.out, &self.options)?;
        Ok(InitReport {
            params: burn::module::Module::num_params(&model),
            secs: start.elapsed().as_secs_f64(),
        })
    }
}

/// Load a checkpoint directory into a model and count its parameters.
#[derive(Debug, Clone)]
pub struct ParamsJob {
    /// The checkpoint directory.
    pub dir: PathBuf,
}

/// What [`ParamsJob`] found.
#[derive(Debug, Clone)]
pub struct ParamsReport {
    /// Parameters of the loaded model (the tied head counted once, meta tokens included).
    pub params: usize,
    /// Parameters the config implies, counted without a model.
    pub config_params: usize,
    /// Tensors in the checkpoint (the tied `lm_head.weight` not counted).
    pub tensors: usize,
    /// Layers.
    pub layers: usize,
    /// Seconds to check, map and load the weights.
    pub load_secs: f64,
}

impl BackendRunner for ParamsJob {
    type Output = Result<ParamsReport, HymbaError>;

    fn run<B: hymba::HymbaBackend>(self, device: B::Device) -> Self::Output {
        let start = Instant::now();
        // Headers first: a wrong checkpoint fails before the model is allocated.
        let (config, specs) = inspect_pretrained(&self.dir)?;
        let model = hymba::load_pretrained::<B>(&self.dir, &device)?;
        Ok(ParamsReport {
            params: burn::module::Module::num_params(&model),
            config_params: config.num_params(),
            tensors: specs.len(),
            layers: config.num_hidden_layers,
            load_secs: start.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hymba::{BackendKind, SaveDtype, run_on};

    #[test]
    fn init_then_params_counts_the_tiny_model() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("tiny");
        let init = InitJob {
            config: HymbaConfig::tiny(),
            seed: 1,
            out: dir.clone(),
            options: SaveOptions {
                dtype: SaveDtype::Bf16,
                ..SaveOptions::default()
            },
        };
        let wrote = run_on(BackendKind::NdArray, 0, init)
            .expect("ndarray")
            .expect("init");
        let job = ParamsJob { dir: dir.clone() };
        let found = run_on(BackendKind::NdArray, 0, job)
            .expect("ndarray")
            .expect("params");
        assert_eq!(found.params, wrote.params);
        assert_eq!(found.params, HymbaConfig::tiny().num_params());
        assert_eq!(found.config_params, found.params);
        assert_eq!(found.tensors, 3 + 4 * 19);
    }
}
