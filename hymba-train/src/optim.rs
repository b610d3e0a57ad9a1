//! The optimizer side of LM training that burn 0.21 lacks: AdamW without weight decay on
//! norms, biases, `A_log`, `D` and meta tokens (burn has no parameter groups), run on packed
//! gradients and weights (see [`crate::packed`]: the moments and the update are a few
//! operations per buffer, not per tensor), and a handle that reaches the optimizer's state
//! for step checkpoints (the `Learner` keeps its optimizer private). Global-norm clipping is
//! [`crate::packed::clip_global_norm`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, LearningRate, MultiGradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

use crate::model::LanguageModel;
use crate::packed::{CHUNK_ELEMENTS, Cursor, Packed, chunk_sizes, param_ids};
use crate::run_config::OptimizerSection;

/// The optimizer state, as checkpoints store it: AdamW's two moments in the packed layout
/// (f32) and the number of steps taken.
#[derive(Record)]
pub struct LmOptimizerRecord<B: Backend> {
    /// AdamW steps taken (the bias correction's t); 0 before the first step.
    pub time: usize,
    /// First moment, one tensor per packed buffer.
    pub moment_1: Vec<Tensor<B, 1>>,
    /// Second moment, one tensor per packed buffer.
    pub moment_2: Vec<Tensor<B, 1>>,
}

impl<B: Backend> LmOptimizerRecord<B> {
    /// Checks that this state belongs to `model`'s packed layout (one moment of each
    /// buffer's size, or no moments before the first step): a checkpoint from another model
    /// is refused here, with a message, rather than failing inside the next step.
    pub fn check_fits<M: Module<B>>(&self, model: &M) -> Result<(), String> {
        let want = chunk_sizes(model);
        let sizes = |m: &[Tensor<B, 1>]| -> Vec<usize> {
            m.iter().map(|t| t.shape().num_elements()).collect()
        };
        let (m1, m2) = (sizes(&self.moment_1), sizes(&self.moment_2));
        let fits = if self.time == 0 {
            m1.is_empty() && m2.is_empty()
        } else {
            m1 == want && m2 == want
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "the optimizer state (moments of {m1:?} and {m2:?} elements) does not fit the \
                 model's packed parameters ({want:?} elements)"
            ))
        }
    }
}

/// Parameters that get no weight decay: every vector (RMSNorm weights, β1 and β2 included,
/// conv and Δ biases, `D`), the meta tokens and `A_log`.
fn no_decay_params<B: Backend>(model: &LanguageModel<B>) -> HashSet<ParamId> {
    struct Vectors(HashSet<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Vectors {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if D == 1 {
                self.0.insert(param.id);
            }
        }
    }
    let mut ids = Vectors(HashSet::new());
    model.visit(&mut ids);
    let hymba = &model.hymba;
    if let Some(tokens) = &hymba.meta_tokens.tokens {
        ids.0.insert(tokens.id);
    }
    ids.0.extend(
        hymba
            .layers
            .iter()
            .filter_map(|l| l.mixer.ssm.as_ref())
            .map(|s| s.a_log.id),
    );
    ids.0
}

/// AdamW's moments over the packed layout.
#[derive(Clone)]
struct Moments<B: AutodiffBackend> {
    time: usize,
    m: Vec<Tensor<B::InnerBackend, 1>>,
    v: Vec<Tensor<B::InnerBackend, 1>>,
}

/// AdamW (decoupled weight decay, PyTorch's and burn's formula) in two groups — decay and
/// no decay — sharing one learning rate, on packed gradients.
///
/// The optimizer keeps the weights packed too (its master weights) and hands back a module
/// whose parameters are views of them, so a step is a few operations per packed buffer
/// whatever the number of tensors: the moments, `Δ = lr · m̂ / (√v̂ + ε)` and `p · (1 − lr · wd) − Δ`.
/// burn's `AdamW` does the same arithmetic tensor by tensor (≈ 15 operations each, ≈ 290
/// tensors in hymba-125m); the test below holds the two equal. A frozen parameter (no
/// `require_grad`) packs a zero gradient and takes no decay, so it stays as long as it has
/// no moments from earlier steps.
#[derive(Clone)]
pub struct LmOptimizer<B: AutodiffBackend> {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    moments: Option<Moments<B>>,
    master: Option<Master<B>>,
    shared: Arc<Shared<B>>,
}

/// What the optimizer, living inside burn's `Learner`, shares with the training strategy.
struct Shared<B: AutodiffBackend> {
    /// Set by [`OptimizerHandle::request_snapshot`]: store the state after the next step.
    want_snapshot: AtomicBool,
    snapshot: Mutex<Option<LmOptimizerRecord<B>>>,
    /// The packed weights of the module the last step returned, with its parameter ids.
    weights: Mutex<Option<(Vec<ParamId>, Packed<B>)>>,
}

/// A handle on the optimizer living inside burn's `Learner` (which keeps it private): its
/// state for checkpoints, and its packed weights for data-parallel replicas.
#[derive(Clone)]
pub struct OptimizerHandle<B: AutodiffBackend> {
    shared: Arc<Shared<B>>,
}

impl<B: AutodiffBackend> OptimizerHandle<B> {
    /// The next optimizer step will store its state after stepping.
    pub fn request_snapshot(&self) {
        self.shared.want_snapshot.store(true, Ordering::SeqCst);
    }

    /// The stored state, if a requested step has run.
    pub fn take_snapshot(&self) -> Option<LmOptimizerRecord<B>> {
        self.shared.snapshot.lock().ok().and_then(|mut s| s.take())
    }

    /// `module`'s weights packed (as [`Packed::weights`] would pack them), when `module` is
    /// the one the last step returned: they are the optimizer's master weights, so no copy.
    pub fn packed_weights<M: Module<B>>(&self, module: &M) -> Option<Packed<B>> {
        let weights = self.shared.weights.lock().ok()?;
        let (ids, packed) = weights.as_ref()?;
        (*ids == param_ids(module)).then(|| packed.clone())
    }
}

impl<B: AutodiffBackend> LmOptimizer<B> {
    /// The optimizer with the run's settings (clipping is the strategy's: it clips the
    /// global norm), and a handle on it for the strategy.
    pub fn new(s: &OptimizerSection) -> (Self, OptimizerHandle<B>) {
        let shared = Arc::new(Shared {
            want_snapshot: AtomicBool::new(false),
            snapshot: Mutex::new(None),
            weights: Mutex::new(None),
        });
        let opt = Self {
            beta_1: s.beta1,
            beta_2: s.beta2,
            epsilon: s.epsilon,
            weight_decay: s.weight_decay,
            moments: None,
            master: None,
            shared: shared.clone(),
        };
        (opt, OptimizerHandle { shared })
    }

    /// Updates the moments with `grads` and returns each buffer's step `lr · m̂ / (√v̂ + ε)`,
    /// in burn's `AdaptiveMomentumW` order of operations.
    fn deltas(&mut self, lr: LearningRate, grads: Packed<B>) -> Vec<Tensor<B::InnerBackend, 1>> {
        let (b1, b2) = (self.beta_1, self.beta_2);
        let grads = grads.into_chunks();
        let moments = match self.moments.take() {
            Some(Moments { time, m, v }) if m.len() == grads.len() => Moments {
                time: time + 1,
                m: m.into_iter()
                    .zip(&grads)
                    .map(|(m, g)| m.mul_scalar(b1).add(g.clone().mul_scalar(1.0 - b1)))
                    .collect(),
                v: v.into_iter()
                    .zip(&grads)
                    .map(|(v, g)| {
                        v.mul_scalar(b2)
                            .add(g.clone().square().mul_scalar(1.0 - b2))
                    })
                    .collect(),
            },
            // Loaded states are checked against the model on resume (`check_fits`).
            Some(Moments { m, .. }) => panic!(
                "the optimizer state has {} packed buffers, the gradients {}: a state loaded \
                 for a different model",
                m.len(),
                grads.len()
            ),
            None => Moments {
                time: 1,
                m: grads
                    .iter()
                    .map(|g| g.clone().mul_scalar(1.0 - b1))
                    .collect(),
                v: grads
                    .iter()
                    .map(|g| g.clone().square().mul_scalar(1.0 - b2))
                    .collect(),
            },
        };
        let t = moments.time as i32;
        let (c1, c2) = (1f32 - b1.powi(t), 1f32 - b2.powi(t));
        let deltas = moments
            .m
            .iter()
            .zip(&moments.v)
            .map(|(m, v)| {
                m.clone()
                    .div_scalar(c1)
                    .div(v.clone().div_scalar(c2).sqrt().add_scalar(self.epsilon))
                    .mul_scalar(lr)
            })
            .collect();
        self.moments = Some(moments);
        deltas
    }
}

/// The weights the optimizer updates, packed, with the module's parameters as views of
/// them: the update is a few operations per buffer, and the parameters need no copy.
#[derive(Clone)]
struct Master<B: AutodiffBackend> {
    weights: Packed<B>,
    /// Per buffer: true where the element takes no weight decay (see [`no_decay_params`];
    /// frozen parameters too).
    keeps: Vec<Tensor<B::InnerBackend, 1, Bool>>,
    /// The parameter ids of the module the last step returned. Every step gives fresh ids,
    /// so a module that did not come out of the last step (a loaded checkpoint, another
    /// model) is seen, and its weights are packed anew.
    ids: Vec<ParamId>,
}

impl<B: AutodiffBackend> Master<B> {
    /// Packs `module`'s weights and decay masks (the first step, or a module from elsewhere).
    fn of(module: &LanguageModel<B>) -> Self {
        struct Keeps {
            no_decay: HashSet<ParamId>,
            cursor: Cursor,
            keeps: Vec<Vec<bool>>,
        }
        impl<B: Backend> ModuleVisitor<B> for Keeps {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let value = param.val();
                let n = value.shape().num_elements();
                let keep = self.no_decay.contains(&param.id) || !value.is_require_grad();
                self.cursor
                    .entry(n, &mut self.keeps)
                    .extend(std::iter::repeat_n(keep, n));
            }
        }
        let mut visit = Keeps {
            no_decay: no_decay_params(module),
            cursor: Cursor::new(CHUNK_ELEMENTS),
            keeps: Vec::new(),
        };
        module.visit(&mut visit);
        let weights = Packed::weights(module);
        let keeps = visit
            .keeps
            .into_iter()
            .zip(weights.chunks())
            .map(|(keep, chunk)| {
                let n = keep.len();
                Tensor::from_data(TensorData::new(keep, [n]), &chunk.device())
            })
            .collect();
        Self {
            weights,
            keeps,
            ids: Vec::new(),
        }
    }
}

impl<B: AutodiffBackend> Optimizer<LanguageModel<B>, B> for LmOptimizer<B>
where
    LanguageModel<B>: AutodiffModule<B>,
{
    type Record = LmOptimizerRecord<B>;

    fn step(
        &mut self,
        lr: LearningRate,
        module: LanguageModel<B>,
        grads: GradientsParams,
    ) -> LanguageModel<B> {
        let packed = Packed::gradients(&module, grads);
        let deltas = self.deltas(lr, packed);
        let master = match self.master.take() {
            Some(master) if master.ids == param_ids(&module) => master,
            _ => Master::of(&module),
        };
        // `p · (1 − lr · wd) − Δ` where the element decays, `p − Δ` elsewhere, as burn's
        // AdamW computes it per tensor.
        let rate = lr * f64::from(self.weight_decay);
        let updated = master
            .weights
            .into_chunks()
            .into_iter()
            .zip(deltas)
            .zip(&master.keeps)
            .map(|((p, delta), keeps)| {
                let delta = delta.cast(p.dtype());
                let decayed = if rate == 0.0 {
                    p
                } else {
                    p.clone()
                        .mul_scalar(1.0 - rate)
                        .mask_where(keeps.clone(), p)
                };
                decayed - delta
            })
            .collect();
        let weights = Packed::from_chunks(updated);
        let (module, ids) = weights.load_weights_renamed(module);
        if let Ok(mut shared) = self.shared.weights.lock() {
            *shared = Some((ids.clone(), weights.clone()));
        }
        self.master = Some(Master {
            weights,
            keeps: master.keeps,
            ids,
        });
        if self.shared.want_snapshot.swap(false, Ordering::SeqCst)
            && let Ok(mut slot) = self.shared.snapshot.lock()
        {
            *slot = Some(self.to_record());
        }
        module
    }

    fn step_multi(
        &mut self,
        lr: LearningRate,
        module: LanguageModel<B>,
        grads: MultiGradientsParams,
    ) -> LanguageModel<B> {
        // Sum every device's gradients on the module's device, then one step.
        let device = module.devices().into_iter().next();
        let summed = grads
            .grads
            .into_iter()
            .map(|(g, _)| {
                let packed = Packed::gradients(&module, g);
                match &device {
                    Some(d) => packed.to_device(d),
                    None => packed,
                }
            })
            .reduce(|a, b| a + b);
        match summed {
            Some(packed) => self.step(lr, module, packed.into_gradients()),
            None => module,
        }
    }

    fn to_record(&self) -> Self::Record {
        match &self.moments {
            Some(Moments { time, m, v }) => LmOptimizerRecord {
                time: *time,
                moment_1: m.iter().cloned().map(Tensor::from_inner).collect(),
                moment_2: v.iter().cloned().map(Tensor::from_inner).collect(),
            },
            None => LmOptimizerRecord {
                time: 0,
                moment_1: Vec::new(),
                moment_2: Vec::new(),
            },
        }
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        self.moments = (record.time > 0).then(|| Moments {
            time: record.time,
            m: record.moment_1.into_iter().map(|t| t.inner()).collect(),
            v: record.moment_2.into_iter().map(|t| t.inner()).collect(),
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::optim::AdamWConfig;
    use hymba::{Hymba, HymbaConfig};

    type B = Autodiff<NdArray>;

    fn settings() -> OptimizerSection {
        OptimizerSection {
            weight_decay: 0.1,
            ..OptimizerSection::default()
        }
    }

    fn tiny_model() -> LanguageModel<B> {
        let device = Default::default();
        B::seed(&device, 5);
        LanguageModel::new(
            Hymba::<B>::new(&HymbaConfig::tiny(), &device).expect("tiny model"),
            None,
        )
    }

    /// The gradients of the loss on a fixed batch, for `model`'s current weights.
    fn grads(model: &LanguageModel<B>, round: i64) -> GradientsParams {
        let device = Default::default();
        let ids: Vec<i64> = (0..2 * 24)
            .map(|i| 1 + ((i + 7 * round) * 37 % 400))
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 24]), &device);
        GradientsParams::from_grads(model.hymba.forward_loss(ids, None).backward(), model)
    }

    fn values(model: &LanguageModel<B>) -> Vec<f64> {
        struct Collect(Vec<f64>);
        impl ModuleVisitor<B> for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0.extend(param.val().into_data().iter::<f64>());
            }
        }
        let mut c = Collect(Vec::new());
        model.visit(&mut c);
        c.0
    }

    /// burn's `AdamW`, tensor by tensor, in the same two groups: the reference.
    fn burn_adamw_step(
        decay: &mut impl Optimizer<LanguageModel<B>, B>,
        no_decay: &mut impl Optimizer<LanguageModel<B>, B>,
        model: LanguageModel<B>,
        mut grads: GradientsParams,
        lr: f64,
    ) -> LanguageModel<B> {
        struct Split<'a> {
            ids: HashSet<ParamId>,
            from: &'a mut GradientsParams,
            to: GradientsParams,
        }
        impl ModuleVisitor<B> for Split<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if self.ids.contains(&param.id)
                    && let Some(g) = self.from.remove::<NdArray, D>(param.id)
                {
                    self.to.register::<NdArray, D>(param.id, g);
                }
            }
        }
        let mut split = Split {
            ids: no_decay_params(&model),
            from: &mut grads,
            to: GradientsParams::new(),
        };
        model.visit(&mut split);
        let no_decay_grads = split.to;
        let model = decay.step(lr, model, grads);
        no_decay.step(lr, model, no_decay_grads)
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                "{what}: value {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn packed_adamw_equals_burns_adamw_in_two_groups() {
        let s = settings();
        let base = AdamWConfig::new()
            .with_beta_1(s.beta1)
            .with_beta_2(s.beta2)
            .with_epsilon(s.epsilon);
        let mut decay = base.clone().with_weight_decay(s.weight_decay).init();
        let mut no_decay = base.with_weight_decay(0.0).init();
        let (mut ours, _) = LmOptimizer::<B>::new(&s);
        let start = tiny_model();
        let (mut a, mut b) = (start.clone(), start.clone());
        for round in 0..3 {
            let lr = 1e-2 / (round + 1) as f64;
            a = ours.step(lr, a.clone(), grads(&a, round));
            b = burn_adamw_step(&mut decay, &mut no_decay, b.clone(), grads(&b, round), lr);
            assert_close(&values(&a), &values(&b), &format!("step {round}"));
        }
        // The weights moved, and by more than weight decay alone would move them.
        let moved = values(&a)
            .iter()
            .zip(values(&start))
            .filter(|(x, y)| (*x - y).abs() > 1e-3 * y.abs())
            .count();
        assert!(moved > values(&start).len() / 2, "{moved} weights moved");
        assert_eq!(ours.to_record().time, 3);
    }

    #[test]
    fn a_loaded_record_continues_like_the_optimizer_it_came_from() {
        let s = settings();
        let (mut straight, _) = LmOptimizer::<B>::new(&s);
        let mut model = tiny_model();
        for round in 0..2 {
            model = straight.step(1e-2, model.clone(), grads(&model, round));
        }
        let (fresh, _) = LmOptimizer::<B>::new(&s);
        let mut resumed = fresh.load_record(straight.to_record());
        let after_straight = straight.step(1e-2, model.clone(), grads(&model, 2));
        let after_resumed = resumed.step(1e-2, model.clone(), grads(&model, 2));
        assert_eq!(values(&after_resumed), values(&after_straight));
        // A fresh optimizer (no moments) steps differently: the record mattered.
        let (mut cold, _) = LmOptimizer::<B>::new(&s);
        let after_cold = cold.step(1e-2, model.clone(), grads(&model, 2));
        assert_ne!(values(&after_cold), values(&after_straight));
    }

    #[test]
    fn snapshot_is_taken_only_when_requested() {
        let (mut opt, handle) = LmOptimizer::<B>::new(&settings());
        let model = tiny_model();
        let model = opt.step(1e-3, model.clone(), grads(&model, 0));
        assert!(handle.take_snapshot().is_none());
        handle.request_snapshot();
        let _ = opt.step(1e-3, model.clone(), grads(&model, 1));
        let record = handle.take_snapshot().expect("requested snapshot");
        assert_eq!(record.time, 2);
        assert_eq!(record.moment_1.len(), 1);
        assert!(handle.take_snapshot().is_none(), "taken once");
    }

    #[test]
    fn a_module_from_elsewhere_is_stepped_from_its_own_weights() {
        let (mut opt, _) = LmOptimizer::<B>::new(&settings());
        let mut stepped = tiny_model();
        for round in 0..2 {
            stepped = opt.step(1e-2, stepped.clone(), grads(&stepped, round));
        }
        // Not the module the last step returned (the packed master weights are those of
        // `stepped`): at lr 0 the step must return `other`'s weights unchanged.
        let other = tiny_model().load_record(tiny_model().into_record());
        assert_ne!(values(&other), values(&stepped));
        let out = opt.step(0.0, other.clone(), grads(&other, 2));
        assert_eq!(values(&out), values(&other));
        // And the module the last step returned is recognised as its own.
        let again = opt.step(0.0, out.clone(), grads(&out, 3));
        assert_eq!(values(&again), values(&other));
    }

    #[test]
    fn the_handle_gives_the_packed_weights_of_the_last_stepped_module_only() {
        let (mut opt, handle) = LmOptimizer::<B>::new(&settings());
        let model = tiny_model();
        assert!(handle.packed_weights(&model).is_none(), "no step yet");
        let stepped = opt.step(1e-2, model.clone(), grads(&model, 0));
        let packed = handle.packed_weights(&stepped).expect("the stepped module");
        let flat: Vec<f64> = packed
            .chunks()
            .iter()
            .flat_map(|c| c.clone().into_data().iter::<f64>().collect::<Vec<_>>())
            .collect();
        assert_eq!(flat, values(&stepped));
        assert!(
            handle.packed_weights(&model).is_none(),
            "not the stepped module"
        );
    }

    #[test]
    fn step_multi_steps_on_the_sum_of_every_devices_gradients() {
        use burn::tensor::backend::DeviceOps;
        let model = tiny_model();
        let device: Device<B> = Default::default();
        let (mut multi, _) = LmOptimizer::<B>::new(&settings());
        let from_devices = MultiGradientsParams {
            grads: vec![
                (grads(&model, 0), device.id()),
                (grads(&model, 1), device.id()),
            ],
        };
        let got = multi.step_multi(1e-2, model.clone(), from_devices);
        let (mut single, _) = LmOptimizer::<B>::new(&settings());
        let summed = Packed::gradients(&model, grads(&model, 0))
            + Packed::gradients(&model, grads(&model, 1));
        let want = single.step(1e-2, model.clone(), summed.into_gradients());
        assert_eq!(values(&got), values(&want));
        // Not the step of one device's gradients alone.
        let (mut one, _) = LmOptimizer::<B>::new(&settings());
        let alone = one.step(1e-2, model.clone(), grads(&model, 0));
        assert_ne!(values(&got), values(&alone));
    }

    #[test]
    fn a_record_fits_its_own_model_only() {
        let (mut opt, _) = LmOptimizer::<B>::new(&settings());
        let model = tiny_model();
        assert_eq!(
            opt.to_record().check_fits(&model),
            Ok(()),
            "before any step"
        );
        let model = opt.step(1e-2, model.clone(), grads(&model, 0));
        let record = opt.to_record();
        assert_eq!(record.check_fits(&model), Ok(()));
        let n = record.moment_1[0].shape().num_elements();
        let short = LmOptimizerRecord {
            time: record.time,
            moment_1: vec![record.moment_1[0].clone().slice(0..n - 1)],
            moment_2: record.moment_2.clone(),
        };
        let err = short.check_fits(&model).expect_err("one element short");
        assert!(err.contains("does not fit"), "{err}");
    }
}
