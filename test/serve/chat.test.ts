// Chat prompts from the tokenizer's chat template (tokenizer_config.json), rendered with Jinja as
// transformers does, the plain template otherwise, and the server's chat route using them.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import OpenAI from 'openai';
import * as dr from '../../lib';
import { renderChat } from '../../lib/serve/chat';
import { serve } from '../../lib/serve/server';

// a ChatML template of the kind Qwen and others ship, with a system default and a refusal
const CHATML = [
  "{% if messages[0]['role'] != 'system' %}{{ bos_token }}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}",
  "{% for message in messages %}",
  "{% if message['role'] == 'developer' %}{{ raise_exception('developer messages are not supported') }}{% endif %}",
  "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}",
  "{% endfor %}",
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
].join('');

const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
const words = ['[UNK]', '<s>', '</s>', '<|im_start|>', '<|im_end|>', 'system', 'user', 'assistant', 'You', 'are', 'helpful', '.', 'the', 'cat', 'sat', 'on', 'mat', 'hi', 'there'];
const tokenizerJson = {
  version: '1.0', truncation: null, padding: null,
  added_tokens: [special(0, '[UNK]'), special(1, '<s>'), special(2, '</s>'), special(3, '<|im_start|>'), special(4, '<|im_end|>')],
  normalizer: null, pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null,
  model: { type: 'WordLevel', vocab: Object.fromEntries(words.map((w, i) => [w, i])), unk_token: '[UNK]' },
};

let dir: string;
let tok: dr.HFTokenizer;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-chat-'));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', chat_template: CHATML }));
  tok = dr.HFTokenizer.fromFile(dir);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('chat templates', () => {
  test('the tokenizer\'s template, rendered as transformers renders it', () => {
    expect(renderChat(tok, [{ role: 'user', content: 'the cat sat' }])).toBe(
      '<s><|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nthe cat sat<|im_end|>\n<|im_start|>assistant\n');
    expect(renderChat(tok, [{ role: 'system', content: 'hi' }, { role: 'user', content: 'on the mat' }, { role: 'assistant', content: 'hi there' }, { role: 'user', content: 'cat' }])).toBe(
      '<|im_start|>system\nhi<|im_end|>\n<|im_start|>user\non the mat<|im_end|>\n<|im_start|>assistant\nhi there<|im_end|>\n<|im_start|>user\ncat<|im_end|>\n<|im_start|>assistant\n');
  });

  test('no template: one "role: content" line per message, then "assistant:"', () => {
    expect(renderChat(new dr.ByteTokenizer(), [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hi' }])).toBe('system: be brief\nuser: hi\nassistant:');
  });

  test('a template that refuses the conversation: ValueError with its message', () => {
    expect(() => renderChat(tok, [{ role: 'developer', content: 'x' }])).toThrow(/developer messages are not supported/);
    expect(() => renderChat(tok, [{ role: 'developer', content: 'x' }])).toThrow(dr.ValueError);
  });

  test('the server\'s chat route encodes the rendered template (special tokens as their ids); a refusal is a 400', async () => {
    const model = new dr.DualRouteLM({ vocabSize: tok.vocabSize, dModel: 16, nHeads: 2, nLayers: 1, maxSeq: 64, seed: 1, pattern: [{ local: 'window', window: 4, global: 'full' }] });
    const srv = await serve({ model, tokenizer: tok, port: 0 });
    try {
      const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const messages = [{ role: 'user' as const, content: 'the cat sat' }];
      const r = await client.chat.completions.create({ model: 'dualroute', messages, max_tokens: 3, temperature: 0 });
      const ids = tok.encode(renderChat(tok, messages));
      expect(ids.slice(0, 3)).toEqual([1, 3, 5]);  // <s> <|im_start|> system
      expect(r.usage!.prompt_tokens).toBe(ids.length);
      // the reply is the model's greedy continuation of exactly those ids (up to eos)
      const want = (await model.generateTokens(ids, { maxTokens: 3, temperature: 0 }))[0];
      const cut = want.indexOf(tok.eosId!);
      expect(r.choices[0].message.content).toBe(tok.decode(cut >= 0 ? want.slice(0, cut) : want));
      const bad = await fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'developer', content: 'x' }] }) });
      expect(bad.status).toBe(400);
      expect((await bad.json()).error.message).toMatch(/developer messages are not supported/);
    } finally {
      await srv.close();
      model.dispose();
    }
  });
});
