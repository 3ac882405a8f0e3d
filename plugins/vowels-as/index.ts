// vowels-as: an Extism plugin written with the AssemblyScript PDK. Nothing in
// it is ForgeOne-specific: the same .wasm runs on any Extism host, and on
// ForgeOne through its extism/1 adapter (forge.json says "abi": "extism/1").
import { Config, Host, LogLevel, Memory } from "@extism/as-pdk";
import { error_set } from "@extism/as-pdk/lib/env";

// asconfig.json routes AssemblyScript's abort here: report the message as the
// plugin's error, then trap.
function abort(message: string | null, file: string | null, line: u32, column: u32): void {
  error_set(Memory.allocateString(message === null ? "abort" : message).offset);
  unreachable();
}

function output(s: string): void {
  Host.output(Uint8Array.wrap(String.UTF8.encode(s)));
}

function fail(message: string): i32 {
  error_set(Memory.allocateString(message).offset);
  return 1;
}

// count_vowels(text) -> {"count":N,"total":N,"vowels":"..."}. The vowel set is
// the deployment config "vowels" (default: ASCII aeiou, both cases).
export function count_vowels(): i32 {
  const text = Host.inputString();
  const configured = Config.get("vowels");
  const vowels = configured === null ? "aeiouAEIOU" : configured;
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    if (vowels.includes(text.charAt(i))) count++;
  }
  Host.log(LogLevel.Info, "counted " + count.toString() + " vowels");
  output(
    '{"count":' + count.toString() + ',"total":' + text.length.toString() +
    ',"vowels":"' + vowels + '"}',
  );
  return 0;
}

function isSpace(c: u8): bool {
  return c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d || c == 0x0b || c == 0x0c;
}

// stats(text) -> {"bytes":N,"chars":N,"words":N,"lines":N}; empty input is an error.
export function stats(): i32 {
  const input = Host.input();
  if (input.length == 0) return fail("stats: empty input");
  let chars = 0;
  let words = 0;
  let lines = 0;
  let inWord = false;
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    if ((c & 0xc0) != 0x80) chars++; // count UTF-8 lead bytes, not continuations
    if (c == 0x0a) lines++;
    if (isSpace(c)) {
      inWord = false;
    } else if (!inWord) {
      inWord = true;
      words++;
    }
  }
  if (input[input.length - 1] != 0x0a) lines++;
  output(
    '{"bytes":' + input.length.toString() + ',"chars":' + chars.toString() +
    ',"words":' + words.toString() + ',"lines":' + lines.toString() + "}",
  );
  return 0;
}
