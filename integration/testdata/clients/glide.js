"use strict";
// @valkey/valkey-glide (GlideClient, standalone) against the proxy, in RESP2: the proxy speaks
// RESP2 only, and GLIDE does not fall back from RESP3 on its own.
// Usage: node glide.js PORT KEY_PREFIX
const glide = require("@valkey/valkey-glide");
const { out, step, libName, run, errText } = require("./common");

const { GlideClient, ProtocolVersion } = glide;
const port = Number(process.argv[2]);
const pre = process.argv[3];

// Batch(isAtomic) since GLIDE 2.0; Transaction/ClusterTransaction before.
function newBatch(atomic) {
  if (glide.Batch) return new glide.Batch(atomic);
  return atomic ? new glide.Transaction() : null;
}

run(async () => {
  const config = {
    addresses: [{ host: "127.0.0.1", port }],
    protocol: ProtocolVersion.RESP2,
    requestTimeout: 5000,
  };
  const client = await GlideClient.createClient(config);
  const other = await GlideClient.createClient(config);

  await step("lib-name", async () => libName(await client.customCommand(["CLIENT", "INFO"])));
  await step("set", () => client.set(pre + "s", "v1"));
  await step("get", () => client.get(pre + "s"));
  await step("get-missing", () => client.get(pre + "missing"));
  await step("incrby", () => client.incrBy(pre + "n", 5));
  await step("hset", () => client.hset(pre + "h", { f1: "v1", f2: "v2" }));
  await step("hget", () => client.hget(pre + "h", "f2"));
  await step("hgetall", async () => {
    const r = await client.hgetall(pre + "h");
    const entries = Array.isArray(r) ? r.map((e) => [String(e.field), String(e.value)]) : Object.entries(r);
    return Object.fromEntries(entries.sort());
  });
  await step("pipeline", async () => {
    const b = newBatch(false);
    if (!b) throw new Error("this GLIDE has no non-atomic Batch");
    b.set(pre + "p1", "1").incr(pre + "p1").hset(pre + "ph", { f: "v" }).get(pre + "p1").get(pre + "missing");
    return client.exec(b, true);
  });
  const k1 = pre + "{tx}a";
  const k2 = pre + "{tx}b";
  await step("transaction", async () => {
    const tx = newBatch(true);
    tx.set(k1, "x").incr(k2).incr(k2).get(k1);
    return client.exec(tx, true);
  });
  await step("custom-get", () => client.customCommand(["GET", k1]));

  // Pub/sub: GLIDE needs RESP3 for it. Subscriptions in the configuration are refused under
  // RESP2 (ConfigurationError, before connecting), and the dynamic subscribe() under RESP2 puts
  // the connection in subscribed mode, times out waiting for a RESP3 push, and every later
  // command on that client fails ("Can't execute ...") -- the same against Valkey itself.
  // So only the configuration check is recorded; the Go test logs it.
  await step("pubsub-config", async () => {
    const c = await GlideClient.createClient({
      ...config,
      pubsubSubscriptions: {
        channelsAndPatterns: { [glide.GlideClientConfiguration.PubSubChannelModes.Exact]: new Set([pre + "ch"]) },
      },
    });
    c.close();
    return "created";
  });

  // LOCK/UNLOCK through customCommand; the token works from any connection.
  const res = pre + "lock";
  await step("lock", () => client.customCommand(["LOCK", res, "PX", "10000"]));
  await step("lock-held", () => other.customCommand(["LOCK", res]));
  await step("unlock", () => other.customCommand(["UNLOCK", res, String(out.lock)]));
  await step("unlock-again", () => client.customCommand(["UNLOCK", res, String(out.lock)]));

  await client.del([pre + "s", pre + "n", pre + "h", pre + "p1", pre + "ph", k1, k2]).catch((e) => {
    out["note-del"] = errText(e);
  });
  client.close();
  other.close();
});
