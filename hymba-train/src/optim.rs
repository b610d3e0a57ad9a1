//! The optimizer side of LM training that burn 0.21 lacks: AdamW without weight decay on
//! norms, biases, `A_log`, `D` and meta tokens (burn has no parameter groups), run on packed
//! gradients (see [`crate::packed`]: the moments and the update are one operation per
//! buffer, not per tensor), and a snapshot of the optimizer state for step checkpoints (the
//! `Learner` keeps its optimizer private). Global-norm clipping is
//! [`crate::packed::clip_global_norm`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, LearningRate, MultiGradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

use crate::model::LanguageModel;
use crate::packed::{CHUNK_ELEMENTS, Cursor, PackedGrads};
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
/// Per step: the moments and `lr · m̂ / (√v̂ + ε)` are a few operations per packed buffer;
/// each parameter then takes one `p · (1 − lr · wd) − Δ`, Δ a view of its slice. burn's
/// `AdamW` does the same arithmetic tensor by tensor (≈ 15 operations each); the test
/// below holds the two equal.
#[derive(Clone)]
pub struct LmOptimizer<B: AutodiffBackend> {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    moments: Option<Moments<B>>,
    snapshot: Arc<Mutex<Option<LmOptimizerRecord<B>>>>,
    want_snapshot: Arc<AtomicBool>,
}

/// A handle to ask the optimizer, living inside burn's `Learner`, for its state.
#[derive(Clone)]
pub struct SnapshotHandle<B: AutodiffBackend> {
    snapshot: Arc<Mutex<Option<LmOptimizerRecord<B>>>>,
    want_snapshot: Arc<AtomicBool>,
}

impl<B: AutodiffBackend> SnapshotHandle<B> {
    /// The next optimizer step will store its state after stepping.
    pub fn request(&self) {
        self.want_snapshot.store(true, Ordering::SeqCst);
    }

    /// The stored state, if a requested step has run.
    pub fn take(&self) -> Option<LmOptimizerRecord<B>> {
        self.snapshot.lock().ok().and_then(|mut s| s.take())
    }
}

impl<B: AutodiffBackend> LmOptimizer<B> {
    /// The optimizer with the run's settings (clipping is the strategy's: it clips the
    /// global norm).
    pub fn new(s: &OptimizerSection) -> (Self, SnapshotHandle<B>) {
        let snapshot = Arc::new(Mutex::new(None));
        let want_snapshot = Arc::new(AtomicBool::new(false));
        let opt = Self {
            beta_1: s.beta1,
            beta_2: s.beta2,
            epsilon: s.epsilon,
            weight_decay: s.weight_decay,
            moments: None,
            snapshot: snapshot.clone(),
            want_snapshot: want_snapshot.clone(),
        };
        (
            opt,
            SnapshotHandle {
                snapshot,
                want_snapshot,
            },
        )
    }

    /// Updates the moments with `grads` and returns each buffer's step `lr · m̂ / (√v̂ + ε)`,
    /// in burn's `AdaptiveMomentumW` order of operations.
    fn deltas(
        &mut self,
        lr: LearningRate,
        grads: PackedGrads<B>,
    ) -> Vec<Tensor<B::InnerBackend, 1>> {
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

/// Applies each parameter's slice of the packed step: `p · (1 − lr · wd) − Δ`, walking the
/// parameters in the packed layout's order. Frozen parameters (no `require_grad`) stay.
struct ApplyDeltas<'a, B: AutodiffBackend> {
    deltas: &'a [Tensor<B::InnerBackend, 1>],
    cursor: Cursor,
    no_decay: &'a HashSet<ParamId>,
    /// `lr · weight_decay`.
    decay_rate: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for ApplyDeltas<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let (chunk, offset) = self.cursor.place(n);
        if !tensor.is_require_grad() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let p = tensor.inner();
        let delta = self.deltas[chunk]
            .clone()
            .slice(offset..offset + n)
            .reshape(dims)
            .cast(p.dtype());
        let decayed = if self.decay_rate == 0.0 || self.no_decay.contains(&id) {
            p
        } else {
            p.mul_scalar(1.0 - self.decay_rate)
        };
        let tensor = Tensor::from_inner(decayed - delta).require_grad();
        Param::from_mapped_value(id, tensor, mapper)
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
        let packed = PackedGrads::pack(&module, grads);
        let deltas = self.deltas(lr, packed);
        // Looked up on the module being stepped: loading a checkpoint replaces parameter ids.
        let no_decay = no_decay_params(&module);
        let module = module.map(&mut ApplyDeltas::<B> {
            deltas: &deltas,
            cursor: Cursor::new(CHUNK_ELEMENTS),
            no_decay: &no_decay,
            decay_rate: lr * f64::from(self.weight_decay),
        });
        if self.want_snapshot.swap(false, Ordering::SeqCst)
            && let Ok(mut slot) = self.snapshot.lock()
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
                let packed = PackedGrads::pack(&module, g);
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
        assert!(handle.take().is_none());
        handle.request();
        let _ = opt.step(1e-3, model.clone(), grads(&model, 1));
        let record = handle.take().expect("requested snapshot");
        assert_eq!(record.time, 2);
        assert_eq!(record.moment_1.len(), 1);
        assert!(handle.take().is_none(), "taken once");
    }
}
