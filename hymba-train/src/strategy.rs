//! `LmStrategy`: a custom burn-train `SupervisedLearningStrategy` for LM pretraining.
//!
//! It keeps burn-train's `Learner`, dashboard, metrics and event store, and adds what LM
//! training needs and burn 0.21's default strategy lacks: steps counted in optimizer steps
//! (one LR step per optimizer step, not per micro-batch), averaged gradient accumulation,
//! global-norm clipping, validation every N steps, checkpoints every N steps with the data
//! position (exact resume), tokens/s and MFU, and NaN handling.
//!
//! Data parallelism: with more than one device, each optimizer step runs `grad_accum`
//! micro-batches on every device at once (one long-lived worker thread per extra device,
//! each keeping a replica of the model), sums the gradients on the main device and takes
//! one optimizer step there. The global batch is `batch_size × grad_accum × devices`, and
//! the loss of each micro-batch is scaled by `1 / (grad_accum × devices)`, so a run on two
//! devices equals a one-device run with twice the accumulation.
//!
//! What crosses devices is packed ([`crate::packed`]): the new weights go out and the
//! gradients come back as one copy per ≤ 128 MiB buffer, where forking the replica and
//! moving its gradients tensor by tensor took ≈ 290 copies each way, each a blocking read of
//! the source device's queue. The workers live for the whole run on purpose: CubeCL keeps one
//! stream per (thread, device), and a thread spawned anew every step left each step's memory
//! on device 1 behind until it ran out (CUDA, 2 × H200). The exchange uses burn's
//! device-to-device copies (NCCL send/receive on CUDA) rather than burn's DDP, so it works
//! on every backend (burn 0.21's DDP lives in its default strategy, which cannot count
//! steps, accumulate or clip the way LM training needs).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::train::{
    EventProcessorTraining, InferenceStep, Learner, LearnerEvent, LearningComponentsMarker,
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainOutput,
    TrainingComponents, TrainingItem, TrainingModel, ValidLoader,
};
use hymba::HymbaBackend;
use hymba_datasets::WindowSampler;

use crate::checkpoint::{self, TrainState};
use crate::data::TrainData;
use crate::dpo::DpoStats;
use crate::error::TrainError;
use crate::fault::{self, Fault};
use crate::model::{LanguageModel, LmStats};
use crate::optim::{LmOptimizer, OptimizerHandle};
use crate::packed::{Packed, clip_global_norm};
use crate::run_config::{CudaMemory, NanPolicy, RunConfig};
use crate::schedule::LrSchedule;

/// The learning components of a Hymba pretraining run on autodiff backend `B`.
pub type Components<B> = LearningComponentsMarker<B, LrSchedule, LanguageModel<B>, LmOptimizer<B>>;

/// What the run did, read by the caller after `launch` returns.
#[derive(Debug, Default)]
pub struct RunLog {
    /// `(step, mean train loss)` per optimizer step.
    pub train_loss: Vec<(usize, f64)>,
    /// `(step, validation loss)` per validation run.
    pub valid_loss: Vec<(usize, f64)>,
    /// DPO: `(step, held-out reward accuracy)` per validation run.
    pub valid_reward_accuracy: Vec<(usize, f64)>,
    /// Text tokens/s of each optimizer step.
    pub tokens_per_sec: Vec<f64>,
    /// Wall seconds of each optimizer step.
    pub step_secs: Vec<f64>,
    /// The newest checkpoint written or resumed from.
    pub last_checkpoint: Option<PathBuf>,
    /// Why the run stopped early, if it did.
    pub error: Option<TrainError>,
}

/// Seconds spent in each phase of a step on the main device (printed with `--step-times`).
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    /// Building the micro-batches' tensors.
    data: f64,
    /// Forward passes, through the loss read back to the host.
    forward: f64,
    /// Backward passes (device synchronised).
    backward: f64,
    /// Summing the micro-batches' gradients.
    accumulate: f64,
}

/// Waits for the device when phases are timed (`timed`), so that each phase's time is its
/// own; otherwise the device runs ahead of the host.
fn phase_sync<B: burn::tensor::backend::Backend>(device: &B::Device, timed: bool) {
    if timed {
        let _ = B::sync(device);
    }
}

/// The host figures of the micro-batches one device ran in an optimizer step, each weighted
/// by its share of the step.
#[derive(Debug, Default, Clone, Copy)]
struct StepFigures {
    loss: f64,
    tokens: usize,
    seq_tokens: usize,
    dpo: DpoStats,
    /// The main device's phase times (other devices' are not merged).
    phases: Phases,
}

impl StepFigures {
    fn add(&mut self, item: &LmStats, share: f64) {
        self.loss += item.loss * share;
        self.tokens += item.tokens;
        self.seq_tokens += item.seq_tokens;
        let (d, e) = (&mut self.dpo, &item.dpo);
        d.loss += e.loss * share;
        d.reward_accuracy += e.reward_accuracy * share;
        d.margin += e.margin * share;
        d.chosen_reward += e.chosen_reward * share;
        d.rejected_reward += e.rejected_reward * share;
    }

    fn merge(&mut self, other: &Self) {
        self.loss += other.loss;
        self.tokens += other.tokens;
        self.seq_tokens += other.seq_tokens;
        let (d, e) = (&mut self.dpo, &other.dpo);
        d.loss += e.loss;
        d.reward_accuracy += e.reward_accuracy;
        d.margin += e.margin;
        d.chosen_reward += e.chosen_reward;
        d.rejected_reward += e.rejected_reward;
    }
}

/// Forward and backward of `draws` (item indices of one micro-batch each) on one device:
/// the summed gradients (packed, on that device) and the figures. Every micro-batch's loss
/// is scaled by `1 / micro_batches`, the number of micro-batches in the whole optimizer step.
/// With `timed`, the device is synchronised after each phase ([`phase_sync`]).
fn run_micro_batches<B>(
    train: &TrainData,
    model: &LanguageModel<B>,
    device: &B::Device,
    draws: &[&Vec<usize>],
    micro_batches: usize,
    timed: bool,
) -> Result<(Option<Packed<B>>, StepFigures), TrainError>
where
    B: AutodiffBackend + HymbaBackend,
{
    let mut summed: Option<Packed<B>> = None;
    let mut figures = StepFigures::default();
    let share = 1.0 / micro_batches as f64;
    for indices in draws {
        let t = Instant::now();
        let batch = train.batch::<B>(indices, share as f32, device)?;
        phase_sync::<B>(device, timed);
        figures.phases.data += t.elapsed().as_secs_f64();
        // `TrainStep::step`, in its two halves (the loss is read back inside `loss`).
        let t = Instant::now();
        let (loss, item) = model.loss(batch);
        figures.phases.forward += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = TrainOutput::new(model, loss.backward(), item);
        phase_sync::<B>(device, timed);
        figures.phases.backward += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let packed = Packed::gradients(model, out.grads);
        summed = Some(match summed {
            Some(sum) => sum + packed,
            None => packed,
        });
        phase_sync::<B>(device, timed);
        figures.phases.accumulate += t.elapsed().as_secs_f64();
        figures.add(&out.item, share);
    }
    Ok((summed, figures))
}

/// What a replica worker is asked to do for one optimizer step.
struct ReplicaJob<B: AutodiffBackend> {
    /// The model on the main device: the worker forks its replica from it once.
    model: LanguageModel<B>,
    /// The weights after the last optimizer step, packed on the main device: the worker
    /// copies them into its replica, one copy per buffer (a fork is one per tensor, each a
    /// blocking read of the main device's queue).
    weights: Packed<B>,
    /// This device's micro-batches (item indices).
    draws: Vec<Vec<usize>>,
    /// Micro-batches in the whole step, over all devices (the loss scale).
    micro_batches: usize,
}

/// A worker's answer: gradients already on the main device (packed: one copy per buffer;
/// `None` when it ran no micro-batch), and the host figures.
type ReplicaResult<B> = Result<(Option<Packed<B>>, StepFigures), TrainError>;

/// A long-lived thread that owns one extra device: every step it loads the weights it is
/// sent into its replica (forked from the model at the first step), runs its micro-batches
/// and sends the gradients back on the main device. All of that device's work is queued
/// from this one thread (see the module docs).
struct ReplicaWorker<B: AutodiffBackend> {
    jobs: std::sync::mpsc::Sender<ReplicaJob<B>>,
    results: std::sync::mpsc::Receiver<ReplicaResult<B>>,
    device: B::Device,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl<B: AutodiffBackend + HymbaBackend> ReplicaWorker<B> {
    /// Starts the worker of `device`; its gradients go to `main`. `exact_memory`: whether the
    /// device keeps buffers by exact size ([`hymba::FixedShapeMemory`]); `timed`: whether
    /// phases are timed ([`phase_sync`]).
    fn spawn(
        train: Arc<TrainData>,
        device: B::Device,
        main: B::Device,
        exact_memory: bool,
        timed: bool,
    ) -> Result<Self, TrainError> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<ReplicaJob<B>>();
        let (result_tx, results) = std::sync::mpsc::channel();
        let dev = device.clone();
        let handle = std::thread::Builder::new()
            .name(format!("replica {device:?}"))
            .spawn(move || {
                let _memory = exact_memory.then(|| hymba::FixedShapeMemory::enter::<B>(&dev));
                let mut kept: Option<LanguageModel<B>> = None;
                while let Ok(job) = job_rx.recv() {
                    let replica = match kept.take() {
                        Some(replica) => job.weights.to_device(&dev).load_weights(replica),
                        None => job.model.fork(&dev),
                    };
                    let draws: Vec<&Vec<usize>> = job.draws.iter().collect();
                    let result =
                        run_micro_batches(&train, &replica, &dev, &draws, job.micro_batches, timed)
                            .map(|(grads, f)| (grads.map(|g| g.to_device(&main)), f));
                    kept = Some(replica);
                    if result_tx.send(result).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| TrainError::Config(format!("cannot start a replica thread: {e}")))?;
        Ok(Self {
            jobs,
            results,
            device,
            handle: Some(handle),
        })
    }

    fn stopped(&self) -> TrainError {
        TrainError::Config(format!(
            "the data-parallel worker of device {:?} stopped (it panicked; see the log above)",
            self.device
        ))
    }

    /// Queues a step's work (returns at once).
    fn send(&self, job: ReplicaJob<B>) -> Result<(), TrainError> {
        self.jobs.send(job).map_err(|_| self.stopped())
    }

    /// Waits for the step's result.
    fn receive(&self) -> ReplicaResult<B> {
        self.results.recv().map_err(|_| self.stopped())?
    }
}

impl<B: AutodiffBackend> Drop for ReplicaWorker<B> {
    fn drop(&mut self) {
        // Closing the job channel ends the worker's loop.
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The strategy; see the module docs.
pub struct LmStrategy<B: AutodiffBackend> {
    /// Training items.
    pub train: Arc<TrainData>,
    /// Draws training items; resumed from the checkpoint.
    pub sampler: Mutex<WindowSampler>,
    /// Optimizer steps already done (resumed runs start after them).
    pub start_step: usize,
    /// The run.
    pub config: RunConfig,
    /// Reaches the optimizer's state (checkpoints) and packed weights (replicas).
    pub optimizer: OptimizerHandle<B>,
    /// Training FLOPs per text token (for MFU).
    pub flops_per_token: f64,
    /// Peak FLOP/s of the device (0 = unknown).
    pub peak_flops: f64,
    /// The main device: the optimizer, validation and checkpoints live here.
    pub device: B::Device,
    /// Further data-parallel devices, each running a replica of the model (empty: one device).
    pub replicas: Vec<B::Device>,
    /// Results for the caller.
    pub log: Arc<Mutex<RunLog>>,
    /// Whether there is a validation set to evaluate.
    pub validate: bool,
    /// Print the phases of every optimizer step (`--step-times`).
    pub step_times: bool,
}

impl<B: AutodiffBackend + HymbaBackend> LmStrategy<B>
where
    B::InnerBackend: HymbaBackend,
{
    /// Whether the training loop keeps CUDA buffers by exact size: steady shapes, and the
    /// run config's `cuda_memory` is `exact`.
    fn exact_memory(&self) -> bool {
        self.train.fixed_shapes() && self.config.cuda_memory == CudaMemory::Exact
    }

    fn csv(&self) -> PathBuf {
        self.config.out_dir.join("loss.csv")
    }

    /// Keeps the loss log consistent with the step the run (re)starts from.
    fn reset_csv(&self) {
        let path = self.csv();
        let kept: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter(|l| {
                l.split(',')
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .is_some_and(|s| s <= self.start_step)
            })
            .map(str::to_string)
            .collect();
        let mut text = String::from("step,split,loss,lr,grad_norm,tokens_per_s\n");
        for l in kept {
            text.push_str(&l);
            text.push('\n');
        }
        let _ = std::fs::write(path, text);
    }

    fn append_csv(&self, line: String) {
        if let Ok(mut f) = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.csv())
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Redraws `loss.png` from `loss.csv` (after each validation and at the end of the run).
    /// A chart that cannot be written is reported, not fatal: the CSV has the numbers.
    fn plot(&self) {
        let dir = &self.config.out_dir;
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let title = format!("{name}: loss per optimizer step");
        if let Err(e) = crate::plot::write_loss_png(&self.csv(), &dir.join("loss.png"), &title) {
            eprintln!("warning: loss chart not written: {e}");
        }
    }

    fn fail(&self, e: TrainError) {
        if let Ok(mut log) = self.log.lock() {
            log.error = Some(e);
        }
    }

    fn validate(
        &self,
        learner: &Learner<Components<B>>,
        valid: &ValidLoader<Components<B>>,
        processor: &mut SupervisedTrainingEventProcessor<Components<B>>,
        step: usize,
        run: usize,
    ) -> LmStats {
        let model = learner.model().valid();
        let global = Progress {
            items_processed: step,
            items_total: self.config.steps,
        };
        let mut iter = valid.iter();
        let (mut sum, mut accuracy, mut tokens) = (0.0, 0.0, 0usize);
        let mut i = 0;
        while let Some(batch) = iter.next() {
            i += 1;
            let stats = InferenceStep::step(&model, batch);
            sum += stats.loss * stats.tokens as f64;
            accuracy += stats.dpo.reward_accuracy * stats.tokens as f64;
            tokens += stats.tokens;
            let item = TrainingItem::new(stats, iter.progress(), global.clone(), Some(i), None);
            processor.process_valid(LearnerEvent::ProcessedItem(item));
        }
        processor.process_valid(LearnerEvent::EndEpoch(run));
        let n = tokens.max(1) as f64;
        let mut mean = LmStats {
            loss: sum / n,
            tokens,
            ..Default::default()
        };
        mean.dpo.loss = mean.loss;
        mean.dpo.reward_accuracy = accuracy / n;
        mean
    }

    /// One optimizer step's forward and backward passes: `grad_accum` micro-batches on every
    /// device, device `d` taking the `d`-th, `d + devices`-th, … draw of the sampler (so the
    /// items seen do not depend on the device count), the extra devices on their workers
    /// while the main device runs its share here. Returns the gradients summed on the main
    /// device and the figures summed over devices.
    fn data_parallel_step(
        &self,
        learner: &Learner<Components<B>>,
        workers: &[ReplicaWorker<B>],
    ) -> Result<(Packed<B>, StepFigures), TrainError> {
        let devices = 1 + workers.len();
        let micro_batches = self.config.grad_accum * devices;
        let draws: Vec<Vec<usize>> = {
            let mut sampler = self
                .sampler
                .lock()
                .map_err(|_| TrainError::Config("sampler lock poisoned".into()))?;
            (0..micro_batches)
                .map(|_| sampler.next_batch(self.config.batch_size))
                .collect()
        };
        let share_of = |d: usize| -> Vec<Vec<usize>> {
            draws.iter().skip(d).step_by(devices).cloned().collect()
        };
        let main_model = learner.model();
        if !workers.is_empty() {
            // The optimizer's packed master weights (packed anew only at the first step).
            let weights = self
                .optimizer
                .packed_weights(&main_model)
                .unwrap_or_else(|| Packed::weights(&main_model));
            for (k, worker) in workers.iter().enumerate() {
                worker.send(ReplicaJob {
                    model: main_model.clone(),
                    weights: weights.clone(),
                    draws: share_of(k + 1),
                    micro_batches,
                })?;
            }
        }
        let mine = share_of(0);
        let mine: Vec<&Vec<usize>> = mine.iter().collect();
        let main = run_micro_batches(
            self.train.as_ref(),
            &main_model,
            &self.device,
            &mine,
            micro_batches,
            self.step_times,
        );
        // Collect every worker's answer before returning, even after an error, so that no
        // result is left in a channel for the next step.
        let others: Vec<ReplicaResult<B>> = workers.iter().map(ReplicaWorker::receive).collect();
        let (mut grads, mut figures) = main?;
        for other in others {
            let (other, f) = other?;
            grads = match (grads, other) {
                (Some(sum), Some(g)) => Some(sum + g),
                (sum, g) => sum.or(g),
            };
            figures.merge(&f);
        }
        let grads = grads.ok_or_else(|| {
            TrainError::Config("an optimizer step without micro-batches (grad_accum = 0?)".into())
        })?;
        Ok((grads, figures))
    }

    fn save_checkpoint(&self, learner: &Learner<Components<B>>, step: usize) {
        let Some(optim) = self.optimizer.take_snapshot() else {
            self.fail(TrainError::Config(
                "optimizer state missing at checkpoint".into(),
            ));
            return;
        };
        let sampler = match self.sampler.lock() {
            Ok(s) => s.state(),
            Err(_) => return,
        };
        let root = self.config.out_dir.join("checkpoints");
        let state = TrainState { step, sampler };
        match checkpoint::save(
            &root,
            &state,
            &learner.model(),
            optim,
            self.config.keep_checkpoints,
        ) {
            Ok(dir) => {
                if let Ok(mut log) = self.log.lock() {
                    log.last_checkpoint = Some(dir);
                }
            }
            Err(e) => self.fail(e),
        }
    }
}

impl<B: AutodiffBackend + HymbaBackend> SupervisedLearningStrategy<Components<B>> for LmStrategy<B>
where
    B::InnerBackend: HymbaBackend,
{
    fn fit(
        &self,
        components: TrainingComponents<Components<B>>,
        mut learner: Learner<Components<B>>,
        _train: TrainLoader<Components<B>>,
        valid: ValidLoader<Components<B>>,
        _starting_epoch: usize,
    ) -> (
        TrainingModel<Components<B>>,
        SupervisedTrainingEventProcessor<Components<B>>,
    ) {
        let mut processor = components.event_processor;
        let interrupter = components.interrupter;
        let cfg = &self.config;
        let total = cfg.steps;
        let workers: Result<Vec<ReplicaWorker<B>>, TrainError> = self
            .replicas
            .iter()
            .map(|d| {
                ReplicaWorker::spawn(
                    self.train.clone(),
                    d.clone(),
                    self.device.clone(),
                    self.exact_memory(),
                    self.step_times,
                )
            })
            .collect();
        let workers = match workers {
            Ok(w) => w,
            Err(e) => {
                self.fail(e);
                return (learner.model(), processor);
            }
        };
        // Steady shapes: cubecl's exact-size buffers (why: `hymba::FixedShapeMemory`), until
        // the loop ends and the samples and the final save run on the default allocator.
        let _memory = self
            .exact_memory()
            .then(|| hymba::FixedShapeMemory::enter::<B>(&self.device));
        let mut valid_runs = 0;
        self.reset_csv();
        let epoch = Progress {
            items_processed: 1,
            items_total: 1,
        };
        for step in self.start_step + 1..=total {
            let started = Instant::now();
            let (grads, figures) = match self.data_parallel_step(&learner, &workers) {
                Ok(r) => r,
                Err(e) => {
                    self.fail(e);
                    return (learner.model(), processor);
                }
            };
            let StepFigures {
                loss,
                tokens,
                seq_tokens,
                dpo,
                phases,
            } = figures;
            learner.lr_step();
            let loss = match fault::hit(Fault::NanLoss, step) {
                true => f64::NAN,
                false => loss,
            };
            if !loss.is_finite() {
                match cfg.on_nan {
                    NanPolicy::Skip => continue,
                    NanPolicy::Stop => {
                        let last = self
                            .log
                            .lock()
                            .ok()
                            .and_then(|l| l.last_checkpoint.clone())
                            .map_or("none".to_string(), |p| p.display().to_string());
                        self.fail(TrainError::NonFiniteLoss {
                            step,
                            loss,
                            last_checkpoint: last,
                        });
                        break;
                    }
                }
            }
            let waited = started.elapsed().as_secs_f64();
            let t = Instant::now();
            let (grads, grad_norm) = clip_global_norm(grads, cfg.optimizer.grad_clip);
            let clip_secs = t.elapsed().as_secs_f64();
            let checkpoint_now = step % cfg.checkpoint_every == 0 || step == total;
            if checkpoint_now {
                self.optimizer.request_snapshot();
            }
            let t = Instant::now();
            learner.optimizer_step(grads.into_gradients());
            phase_sync::<B>(&self.device, self.step_times);
            if self.step_times {
                let ms = |x: f64| x * 1e3;
                eprintln!(
                    "step {step} phases (ms): data {:.1} | forward {:.1} | backward {:.1} | \
                     accumulate {:.1} | other devices {:.1} | clip {:.1} | optimizer {:.1}",
                    ms(phases.data),
                    ms(phases.forward),
                    ms(phases.backward),
                    ms(phases.accumulate),
                    ms(waited - phases.data - phases.forward - phases.backward - phases.accumulate),
                    ms(clip_secs),
                    ms(t.elapsed().as_secs_f64()),
                );
            }
            let lr = learner.lr_current();
            let secs = started.elapsed().as_secs_f64();
            let tokens_per_sec = seq_tokens as f64 / secs.max(1e-9);
            let mfu_pct = if self.peak_flops > 0.0 {
                100.0 * tokens_per_sec * self.flops_per_token
                    / (self.peak_flops * (1 + self.replicas.len()) as f64)
            } else {
                0.0
            };
            let stats = LmStats {
                loss,
                tokens,
                seq_tokens,
                dpo,
                grad_norm,
                tokens_per_sec,
                mfu_pct,
            };
            let progress = Progress {
                items_processed: step,
                items_total: total,
            };
            let item = TrainingItem::new(stats, progress, epoch.clone(), Some(step), Some(lr));
            processor.process_train(LearnerEvent::ProcessedItem(item));
            self.append_csv(format!(
                "{step},train,{loss},{lr},{grad_norm},{tokens_per_sec:.1}"
            ));
            if let Ok(mut log) = self.log.lock() {
                log.train_loss.push((step, loss));
                log.tokens_per_sec.push(tokens_per_sec);
                log.step_secs.push(secs);
            }
            let validate_now =
                (cfg.valid_every > 0 && step % cfg.valid_every == 0) || step == total;
            if self.validate && validate_now {
                valid_runs += 1;
                let v = self.validate(&learner, &valid, &mut processor, step, valid_runs);
                self.append_csv(format!("{step},valid,{},,,", v.loss));
                self.plot();
                if let Ok(mut log) = self.log.lock() {
                    log.valid_loss.push((step, v.loss));
                    log.valid_reward_accuracy
                        .push((step, v.dpo.reward_accuracy));
                }
            }
            if checkpoint_now {
                self.save_checkpoint(&learner, step);
            }
            if interrupter.should_stop() {
                break;
            }
        }
        processor.process_train(LearnerEvent::EndEpoch(1));
        self.plot();
        (learner.model(), processor)
    }
}
