// An Extism plugin written with the AssemblyScript PDK (@extism/as-pdk), as a
// plugin author would write it for any Extism host. tests/test_extism.py builds
// it with `asc` and runs it through a real ForgeOne worker.
import { Config, Host, LogLevel, Memory, Var } from "@extism/as-pdk";
import { error_set, http_request, length } from "@extism/as-pdk/lib/env";

// The PDK's env.ts does not declare it; the ABI has it.
@external("extism:host/env", "http_status_code")
declare function http_status_code(): i32;

// `asc --use abort=plugin/abort`: a failed assertion or a throw records its
// message as the plugin's error, then traps.
function abort(message: string | null, file: string | null, line: u32, column: u32): void {
  const text = message === null ? "abort" : message;
  error_set(Memory.allocateString(text).offset);
  unreachable();
}

function output(s: string): void {
  Host.output(Uint8Array.wrap(String.UTF8.encode(s)));
}

export function echo(): i32 {
  Host.output(Host.input());
  return 0;
}

export function count_vowels(): i32 {
  const input = Host.input();
  let count = 0;
  for (let i = 0; i < input.length; i++) {
    const c = input[i] | 0x20;
    if (c == 0x61 || c == 0x65 || c == 0x69 || c == 0x6f || c == 0x75) count++;
  }
  output(count.toString());
  return 0;
}

export function greet(): i32 {
  const greeting = Config.get("greeting");
  output((greeting === null ? "Hello" : greeting) + ", " + Host.inputString() + "!");
  return 0;
}

export function count(): i32 {
  const seen = Var.getString("count");
  const n = (seen === null ? 0 : I32.parseInt(seen)) + 1;
  Var.set("count", Uint8Array.wrap(String.UTF8.encode(n.toString())));
  output(n.toString());
  return 0;
}

export function fetch(): i32 {
  const url = Host.inputString();
  const req = Memory.allocateString('{"method":"GET","url":"' + url + '"}');
  const body = http_request(req.offset, 0);
  const status = http_status_code();
  const text = body == 0 ? "" : new Memory(body, length(body)).toString();
  output(status.toString() + " " + text);
  return 0;
}

export function fail(): i32 {
  error_set(Memory.allocateString("bad input: " + Host.inputString()).offset);
  return 1;
}

export function log(): i32 {
  Host.log(LogLevel.Info, Host.inputString());
  return 0;
}

export function boom(): i32 {
  assert(false, "boom: an assertion failed");
  return 0;
}

export function spin(): i32 {
  let i: i64 = 0;
  while (i >= 0) i++;
  return 0;
}
