// The dual-routing models.
export { DualRouteLM, DualRouteLayer, ConvPath } from './dual_route_lm';
export type { LayerRouting, LayerTrace, RoutingTrace, RoutingTraceOptions } from './dual_route_lm';
export { resolveConfig } from './config';
export type { DualRouteLMConfig, LayerConfig, MoEConfig, ResolvedConfig, ResolvedLayer, LocalKind, GlobalKind, FusionKind } from './config';
export { DualRouteSeq2Seq, DualRouteClassifier } from './seq2seq';
export type { DualRouteSeq2SeqConfig } from './seq2seq';
export { saveModel, loadModel } from './io';
export { generate, generateTokens, sampleToken } from './generate';
export type { GenerateOptions, GeneratedToken } from './generate';
export { DecodeCache } from './decode';
export type { StepLayerRouting, TokenRouting } from './decode';
