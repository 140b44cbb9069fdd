// Chat prompts: the checkpoint's tokenizer's chat template (tokenizer_config.json's
// chat_template, a Jinja template, rendered by @huggingface/jinja as transformers'
// apply_chat_template does: messages, add_generation_prompt, bos_token, eos_token, and the
// library's own raise_exception), or, when the
// tokenizer has none, a plain one: one "role: content" line per message, then "assistant:".
import { ValueError, describe } from '../errors';
import type { Tokenizer } from '../train/tokenizers';

export interface ChatMessage {
  role: string;
  content: string;
}

/** The chat template a tokenizer carries (HFTokenizer.chatTemplate), or null. */
export function chatTemplateOf(tok: Tokenizer): string | null {
  const t = (tok as { chatTemplate?: unknown }).chatTemplate;
  return typeof t === 'string' && t.length > 0 ? t : null;
}

// compiled templates by source (a server renders one template many times)
const compiled = new Map<string, { render(items: Record<string, unknown>): string }>();

/**
 * The prompt text for `messages`, ending where the assistant's reply begins. Throws ValueError
 * (with the template's message) when the template fails, as a template that raises on a role
 * order it does not accept does.
 */
export function renderChat(tok: Tokenizer, messages: readonly ChatMessage[]): string {
  if (!Array.isArray(messages)) throw new ValueError(`renderChat: Expected an array of messages but received ${describe(messages)}`);
  const template = chatTemplateOf(tok);
  if (template === null) return messages.map((m) => `${m.role}: ${m.content}\n`).join('') + 'assistant:';
  let t = compiled.get(template);
  if (!t) {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { Template } = require('@huggingface/jinja') as typeof import('@huggingface/jinja');
    try {
      t = new Template(template);
    } catch (e) {
      throw new ValueError(`renderChat: the tokenizer's chat template does not parse: ${(e as Error).message}`);
    }
    compiled.set(template, t);
  }
  const special = tok as { bosToken?: string | null; eosToken?: string | null; padToken?: string | null };
  try {
    return t.render({
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      add_generation_prompt: true,
      bos_token: special.bosToken ?? '',
      eos_token: special.eosToken ?? '',
      pad_token: special.padToken ?? '',
    });
  } catch (e) {
    throw new ValueError(`renderChat: the chat template failed: ${(e as Error).message}`);
  }
}
