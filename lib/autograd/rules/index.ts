// Registers every backward rule (imported by the engine before the first backward pass).
import './elementwise';
import './reduce';
import './shape';
import './linalg';
import './nn';
import './indexing';
import './attention';
import './segment';
import './sort';
import './routing';
import './moe';
import './rnn';
import './fused';
