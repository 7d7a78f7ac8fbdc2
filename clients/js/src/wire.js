// The wire format of docs/PROTOCOL.md in JSON: subjects, keys, lock ids,
// request encoding, and answers with their fencing token as a BigInt.

import { randomBytes } from 'node:crypto';

import { BadRequestError, serviceError } from './errors.js';

/** The longest key in bytes. */
export const MAX_KEY_BYTES = 512;

const TOKEN_CHAR = /^[-/_=a-zA-Z0-9]$/;

/**
 * keyProblem returns why key is not a valid key (docs/PROTOCOL.md "Keys and
 * lock ids"), or '' when it is.
 * @param {unknown} key
 * @param {{allowTrailingDot?: boolean}} [options]
 */
export function keyProblem(key, options = {}) {
  if (typeof key !== 'string') return `must be a string, got ${typeof key}`;
  if (key === '') return "is empty; a key is one or more '.'-separated tokens of [-/_=a-zA-Z0-9]";
  const bytes = Buffer.byteLength(key);
  if (bytes > MAX_KEY_BYTES) return `is ${bytes} bytes, the limit is ${MAX_KEY_BYTES}`;
  let tokenStart = 0;
  for (let i = 0; i < key.length; i++) {
    const c = key[i];
    if (c === '.') {
      if (i === tokenStart) return `${JSON.stringify(key)} has an empty token; remove the extra '.'`;
      tokenStart = i + 1;
    } else if (!TOKEN_CHAR.test(c)) {
      return `${JSON.stringify(key)} contains ${JSON.stringify(c)} at position ${i}; allowed are [-/_=a-zA-Z0-9] and '.' between tokens`;
    }
  }
  if (tokenStart === key.length && !options.allowTrailingDot) return `${JSON.stringify(key)} ends with '.'`;
  return '';
}

/**
 * checkKey throws a BadRequestError when key is not a valid key.
 * @param {string} op
 * @param {unknown} key
 */
export function checkKey(op, key) {
  const problem = keyProblem(key);
  if (problem) {
    throw new BadRequestError(`lockservice: ${op}: invalid key: ${problem}`, { op, key: String(key) });
  }
}

/** newLockId returns a fresh lock id: 16 random bytes, unpadded base64url. */
export function newLockId() {
  return randomBytes(16).toString('base64url');
}

/**
 * subject returns `<prefix>.<op>.<key>`.
 * @param {string} prefix
 * @param {string} op
 * @param {string} key
 */
export function subject(prefix, op, key) {
  return `${prefix}.${op}.${key}`;
}

/**
 * encodeRequest encodes a request: the fields of `fields` that are not
 * undefined, then `value` (already JSON text) when given.
 * @param {Record<string, unknown>} fields
 * @param {string} [valueJSON]
 */
export function encodeRequest(fields, valueJSON) {
  const text = JSON.stringify(fields);
  if (valueJSON === undefined) return text;
  return `${text.slice(0, -1)}${text.length > 2 ? ',' : ''}"value":${valueJSON}}`;
}

/**
 * toJSON encodes a state value, throwing a BadRequestError when it cannot
 * be (a BigInt, a cycle, a function, undefined).
 * @param {string} op
 * @param {string} key
 * @param {unknown} value
 */
export function toJSON(op, key, value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw new BadRequestError(`lockservice: ${op} ${JSON.stringify(key)}: the value cannot be encoded as JSON: ${err instanceof Error ? err.message : err}`, { op, key, cause: err });
  }
  if (text === undefined) {
    throw new BadRequestError(`lockservice: ${op} ${JSON.stringify(key)}: the value cannot be encoded as JSON (${typeof value})`, { op, key });
  }
  return text;
}

/**
 * topLevelToken returns the digits of the top-level "token" field of the
 * JSON object text, or undefined. JSON.parse would round a uint64 above
 * 2^53; these digits are exact.
 * @param {string} text
 */
export function topLevelToken(text) {
  let depth = 0;
  for (let i = 0; i < text.length; ) {
    const c = text[i];
    if (c === '"') {
      const start = i++;
      while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
      i++;
      if (depth === 1 && text.slice(start, i) === '"token"') {
        let j = i;
        while (/\s/.test(text[j] ?? '')) j++;
        if (text[j] !== ':') continue; // a string value, not a key
        j++;
        while (/\s/.test(text[j] ?? '')) j++;
        const m = /^\d+/.exec(text.slice(j, j + 24));
        if (m) return m[0];
      }
      continue;
    }
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    i++;
  }
  return undefined;
}

const decoder = new TextDecoder();

/**
 * decodeAnswer returns the answer a service message carries: it throws
 * the typed error of an error answer, else parses the JSON body, with
 * `token` as a BigInt when present.
 * @param {string} op
 * @param {string} key
 * @param {import('@nats-io/transport-node').Msg} msg
 */
export function decodeAnswer(op, key, msg) {
  const code = msg.headers?.get('Nats-Service-Error-Code');
  if (code) {
    throw serviceError(op, key, Number.parseInt(code, 10), msg.headers?.get('Nats-Service-Error') ?? '');
  }
  const text = decoder.decode(msg.data);
  let answer;
  try {
    answer = JSON.parse(text);
  } catch (err) {
    throw serviceError(op, key, 500, `the answer is not JSON (${err instanceof Error ? err.message : err}): ${text.slice(0, 200)}`);
  }
  if (answer === null || typeof answer !== 'object') {
    throw serviceError(op, key, 500, `the answer is not a JSON object: ${text.slice(0, 200)}`);
  }
  if ('token' in answer) {
    answer.token = BigInt(topLevelToken(text) ?? String(answer.token));
  }
  return answer;
}
