// nn: modules for building models (new nn.Linear(8, 4)).
export { Module, ModuleList, ModuleDict, ParameterList, asParameter, isParameter } from './module';
export type { LoadOptions } from './module';
export { Linear, Embedding, RMSNorm, LayerNorm, Dropout, Sequential, MLP, addAndNorm, addAndNormPending, pendingNorm } from './layers';
export type { InitOptions, PendingResidual } from './layers';
export { ReLU, GELU, SiLU } from './activations';
export { MultiheadAttention, TransformerBlock, SinusoidalPositionalEmbedding } from './attention';
export type { MultiheadAttentionOptions, AttentionForwardOptions, TransformerBlockOptions } from './attention';
export * from './routers';
export { Conv1d } from './conv';
export type { Conv1dOptions } from './conv';
export { RoutedAttention } from './routed';
export type { RoutedAttentionOptions, RoutedStats } from './routed';
export { NSAAttention } from './nsa';
export type { NSAAttentionOptions } from './nsa';
export { LSTM, type LSTMOptions, type LSTMState, type LSTMOutput } from './rnn';
