// dualroute: dual-level routing language models on a native C++/CUDA core.
import './methods';

export { Tensor, tidy, keep, dispose } from './tensor';
export type { NestedArray } from './tensor';
export type { DType } from './dtype';
export type { Device, DevicesInfo } from './device';
export { devices, defaultDevice, setDefaultDevice, cudaAvailable, numThreads, setNumThreads } from './device';
export { memory, synchronize, synchronizeAsync, pendingOps, emptyCache } from './memory';
export type { MemoryInfo } from './memory';
export { Generator, manualSeed, defaultGenerator } from './random';
export * from './errors';
export * from './ops/creation';
export * from './ops/shape';
export * from './ops/elementwise';
export * from './ops/reduce';
export * from './ops/linalg';
export * from './ops/nn';
export { addRmsNorm, biasAct, BIAS_ACTIVATIONS } from './ops/fused';
export type { BiasActivation } from './ops/fused';
export * from './ops/indexing';
export * from './ops/inplace';
export * from './ops/sort';
export * from './ops/select';
export * from './ops/routing';
export * from './ops/route_rules';
export * from './ops/kvcache';
export { moePlan, moeDispatch, moeCombine, groupedMatmul, moeExpertFFN } from './ops/moe';
export type { MoeLayout, MoePlan, MoeLayoutOptions, MoeDispatchResult, GroupedMatmulOptions, MoeExpertFFNOptions } from './ops/moe';
export { empty } from './ops/util';
export { noGrad, enableGrad, isGradEnabled, backward } from './autograd/engine';
export type { BackwardOptions } from './autograd/engine';
export { gradcheck } from './autograd/gradcheck';
export type { GradcheckOptions, GradcheckReport } from './autograd/gradcheck';
export * as nn from './nn';
export * as optim from './optim';
export { saveSafetensors, saveSafetensorsSync, loadSafetensors, loadSafetensorsSync, parseSafetensorsHeader, readSafetensorsHeader } from './train/safetensors';
export type { SafetensorsHeader, SafetensorsEntry } from './train/safetensors';
export { saveCheckpoint, saveCheckpointSync, loadCheckpoint, loadCheckpointSync } from './train/checkpoint';
export type { CheckpointContents } from './train/checkpoint';
export { Trainer, fit, classificationScores } from './train/trainer';
export type { TrainerOptions, TrainerCallbacks, TrainSource, EvalSource, Batch, Seq2SeqBatch, ClassifyBatch, EvalMetrics, StepInfo, FitResult, Task } from './train/trainer';
export { renderSvg, svgToPng, lossCurvesSpec, routingHeatmapSpec, writePlots, plotRun, plotRouting, readLossRecords, LOSS_COLORS, MAX_PNG_SIDE } from './train/plots';
export type { VegaLiteSpec, PngOptions, LossRecord, LossCurvesOptions, RoutingHeatmapOptions, WritePlotsOptions, PlotRunOptions } from './train/plots';
export * from './ops/attention';
export { segmentMean, segmentScores, segmentSelect, selectSegments, segmentAttention, compressedAttention } from './ops/segment';
export type { SegmentScoresOptions, SegmentSelectOptions, SegmentSelection, SelectSegmentsArgs, SegmentAttentionOptions, SegmentAttentionResult, CompressedAttentionOptions } from './ops/segment';
export * from './ops/rnn';
export { RingKVCache, SegmentKVCache } from './serve/kv_cache';
export { serve, buildApp } from './serve/server';
export type { ServeOptions, ServeLimits, Server } from './serve/server';
export type { TokenRoute } from './serve/server';
export type { RingKVCacheOptions, SegmentKVCacheOptions } from './serve/kv_cache';
export * as models from './models';
export { DualRouteLM, DualRouteSeq2Seq, DualRouteClassifier, saveModel, loadModel } from './models';
export type { DualRouteLMConfig, LayerConfig, DualRouteSeq2SeqConfig, RoutingTrace, RoutingTraceOptions, LayerTrace } from './models';
export type { StepLayerRouting, TokenRouting } from './models';
export { ByteTokenizer, HFTokenizer, loadTokenizer, HF_MODEL_TYPES } from './train/tokenizers';
export type { Tokenizer, TokenizerSpec, EncodeOptions, DecodeOptions, HFTokenizerOptions } from './train/tokenizers';
export {
  IGNORE_INDEX, readTextCorpus, tokenizeCorpus, splitTrainVal, LMBatcher, readJsonl, ClassificationDataset, PairDataset,
  SyntheticTask, associativeRecall, longRangeCopy, localPattern, accuracy,
} from './train/data';
export type {
  TextDocument, ReadTextCorpusOptions, TokenizeCorpusOptions, SplitOptions, LMBatch, LMBatcherOptions, LMBatcherState,
  RecordDatasetOptions, RecordDatasetState, ClassificationRecord, ClassificationDatasetOptions, ClassificationBatch,
  PairRecord, PairDatasetOptions, PairBatch, SyntheticTaskState, AssociativeRecallOptions, LongRangeCopyOptions,
  LocalPatternOptions,
} from './train/data';
