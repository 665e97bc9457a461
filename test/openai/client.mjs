// client.mjs BASE_URL KEY MODEL: the official openai npm client against a
// running `switchyard serve --api-key KEY` (scripts/openai-client-test.sh
// starts one). With KEY it gets a chat completion, a streamed chat
// completion (with usage), a completion, a streamed completion and the
// model list; with a wrong key and with no key at all it must get
// openai.AuthenticationError (401, code invalid_api_key). Its last line is
// "openai-client: PASS" (exit 0) or "openai-client: FAIL <reason>" (exit 1).
import OpenAI from 'openai';

const [baseURL, key, model] = process.argv.slice(2);

function check(cond, what) {
  if (!cond) throw new Error(what);
}

// The generation parameters of every call: greedy, a few tokens, and
// vLLM's ignore_eos so that the tiny test model always produces them.
const gen = { max_tokens: 6, temperature: 0, ignore_eos: true };

async function authorized(client) {
  const models = await client.models.list();
  check(models.data.some((m) => m.id === model), `models.list: no ${model} in ${JSON.stringify(models.data)}`);

  const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello' }], ...gen });
  const c0 = chat.choices?.[0];
  check(chat.object === 'chat.completion', `chat: object ${chat.object}`);
  check(c0?.message?.role === 'assistant' && typeof c0.message.content === 'string', `chat: message ${JSON.stringify(c0?.message)}`);
  check(c0.finish_reason === 'length' && chat.usage?.completion_tokens === gen.max_tokens, `chat: finish ${c0.finish_reason}, usage ${JSON.stringify(chat.usage)}`);

  const stream = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Hello' }], stream: true, stream_options: { include_usage: true }, ...gen,
  });
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    check(chunk.object === 'chat.completion.chunk', `chat stream: object ${chunk.object}`);
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      text += ch.delta?.content ?? '';
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  check(chunks >= 2 && finish === 'length' && usage?.completion_tokens === gen.max_tokens,
    `chat stream: ${chunks} chunks, finish ${finish}, usage ${JSON.stringify(usage)}`);
  check(text === c0.message.content, `chat stream text ${JSON.stringify(text)} != whole ${JSON.stringify(c0.message.content)}`);

  const cmpl = await client.completions.create({ model, prompt: 'Of the Colours of', ...gen });
  check(cmpl.object === 'text_completion' && typeof cmpl.choices?.[0]?.text === 'string', `completions: ${JSON.stringify(cmpl)}`);
  check(cmpl.usage?.completion_tokens === gen.max_tokens, `completions: usage ${JSON.stringify(cmpl.usage)}`);

  const cstream = await client.completions.create({ model, prompt: 'Of the Colours of', stream: true, ...gen });
  let ctext = '';
  for await (const chunk of cstream) {
    ctext += chunk.choices?.[0]?.text ?? '';
  }
  check(ctext === cmpl.choices[0].text, `completions stream text ${JSON.stringify(ctext)} != whole ${JSON.stringify(cmpl.choices[0].text)}`);
}

// refused expects call to fail with the SDK's AuthenticationError for a
// 401 invalid_api_key.
async function refused(what, call) {
  try {
    await call();
  } catch (err) {
    check(err instanceof OpenAI.AuthenticationError, `${what}: ${err?.constructor?.name}: ${err?.message}`);
    check(err.status === 401, `${what}: status ${err.status}`);
    check(err.code === 'invalid_api_key', `${what}: code ${err.code}`);
    check(err.type === 'invalid_request_error', `${what}: type ${err.type}`);
    return;
  }
  throw new Error(`${what}: the request succeeded`);
}

async function main() {
  check(baseURL && key && model, 'usage: node client.mjs BASE_URL KEY MODEL');
  const opts = { baseURL, maxRetries: 0, timeout: 60_000 };
  await authorized(new OpenAI({ ...opts, apiKey: key }));

  const wrong = new OpenAI({ ...opts, apiKey: `${key}-wrong` });
  await refused('wrong key, chat', () => wrong.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], ...gen }));
  await refused('wrong key, completions', () => wrong.completions.create({ model, prompt: 'Hi', ...gen }));
  await refused('wrong key, models', () => wrong.models.list());

  // No key at all: the SDK insists on one, so a fetch wrapper takes the
  // Authorization header off every request it sends.
  const bare = new OpenAI({
    ...opts,
    apiKey: 'unused',
    fetch: (url, init) => {
      const headers = new Headers(init?.headers);
      headers.delete('authorization');
      return fetch(url, { ...init, headers });
    },
  });
  await refused('no key, chat', () => bare.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], ...gen }));
  await refused('no key, streamed chat', () => bare.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], stream: true, ...gen }));
  await refused('no key, completions', () => bare.completions.create({ model, prompt: 'Hi', ...gen }));
}

main().then(
  () => {
    console.log('openai-client: PASS');
  },
  (err) => {
    console.log(`openai-client: FAIL ${String(err?.message ?? err).replace(/\s+/g, ' ')}`);
    process.exitCode = 1;
  },
);
