"use strict";
// Shared by the client scripts: each step's result (or {error}) goes into one JSON object that
// the Go test (integration/clients_test.go) compares; the object is printed exactly once.

const out = {};
let printed = false;

function print() {
  if (printed) return;
  printed = true;
  process.stdout.write(JSON.stringify(out) + "\n");
}

function errText(e) {
  return String((e && e.message) || e);
}

// step records what fn resolves to (undefined becomes null), or {error: message}.
async function step(name, fn) {
  try {
    const v = await fn();
    out[name] = v === undefined ? null : v;
    return true;
  } catch (e) {
    out[name] = { error: errText(e) };
    return false;
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// libName extracts lib-name=... from a CLIENT INFO line.
function libName(info) {
  const m = /(?:^| )lib-name=(\S*)/.exec(String(info));
  return m ? m[1] : null;
}

// run executes main with a hard deadline, then prints the results and exits.
function run(main, deadlineMs = 60000) {
  const timer = setTimeout(() => {
    out["note-deadline"] = `script did not finish within ${deadlineMs} ms`;
    print();
    process.exit(3);
  }, deadlineMs);
  main()
    .catch((e) => {
      out["note-fatal"] = errText(e);
    })
    .finally(() => {
      clearTimeout(timer);
      print();
      // Clients may keep timers or sockets alive after close: do not wait for them.
      process.exit(0);
    });
}

module.exports = { out, step, withTimeout, libName, run, errText };
