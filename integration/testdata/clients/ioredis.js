"use strict";
// ioredis against the proxy, default options: ioredis 6 opens with HELLO 3 and, on NOPROTO,
// downgrades to RESP2 and redoes its handshake (CLIENT SETINFO, then INFO as the ready check).
// Usage: node ioredis.js PORT KEY_PREFIX
const Redis = require("ioredis");
const { out, step, withTimeout, libName, run } = require("./common");

const port = Number(process.argv[2]);
const pre = process.argv[3];

run(async () => {
  const opts = {
    host: "127.0.0.1",
    port,
    connectTimeout: 5000,
    commandTimeout: 10000,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null, // no reconnect loop: a failure shows up as an error
  };
  const redis = new Redis(opts);
  const other = new Redis(opts);
  for (const [name, c] of [["redis", redis], ["other", other]]) {
    c.on("error", (e) => (out[`note-${name}-error`] = String(e.message)));
  }

  await step("lib-name", async () => libName(await redis.call("CLIENT", "INFO")));
  await step("set", () => redis.set(pre + "s", "v1"));
  await step("get", () => redis.get(pre + "s"));
  await step("get-missing", () => redis.get(pre + "missing"));
  await step("incrby", () => redis.incrby(pre + "n", 5));
  await step("hset", () => redis.hset(pre + "h", "f1", "v1", "f2", "v2"));
  await step("hget", () => redis.hget(pre + "h", "f2"));
  await step("hgetall", () => redis.hgetall(pre + "h"));
  await step("pipeline", () =>
    redis
      .pipeline()
      .set(pre + "p1", "1")
      .incr(pre + "p1")
      .hset(pre + "ph", "f", "v")
      .get(pre + "p1")
      .get(pre + "missing")
      .exec(),
  );
  const k1 = pre + "{tx}a";
  const k2 = pre + "{tx}b";
  await step("multi", () => redis.multi().set(k1, "x").incr(k2).incr(k2).get(k1).exec());

  // WATCH on redis; another connection changes the key; EXEC must abort (null).
  const w = pre + "{w}n";
  await step("watch-conflict", async () => {
    await redis.set(w, "1");
    await redis.watch(w);
    await other.set(w, "100");
    return redis.multi().set(w, "999").exec();
  });
  await step("after-watch", () => redis.get(w));

  // Pub/sub on a duplicate connection; PUBLISH from another one.
  const ch = pre + "ch";
  const pat = pre + "pat.*";
  const sub = redis.duplicate();
  sub.on("error", (e) => (out["note-sub-error"] = String(e.message)));
  const message = new Promise((resolve) => sub.on("message", (c, m) => resolve([c, m])));
  const pmessage = new Promise((resolve) => sub.on("pmessage", (p, c, m) => resolve([p, c, m])));
  if (await step("subscribe", () => withTimeout(sub.subscribe(ch), 10000, "SUBSCRIBE"))) {
    await step("psubscribe", () => withTimeout(sub.psubscribe(pat), 10000, "PSUBSCRIBE"));
    await step("publish", () => other.publish(ch, "hello"));
    await step("message", () => withTimeout(message, 10000, "message"));
    await step("publish-pattern", () => other.publish(pre + "pat.x", "world"));
    await step("pmessage", () => withTimeout(pmessage, 10000, "pmessage"));
    await step("unsubscribe", () => withTimeout(sub.unsubscribe(ch), 10000, "UNSUBSCRIBE"));
  }
  sub.disconnect();

  // LOCK/UNLOCK through the generic call; the token works from any connection.
  const res = pre + "lock";
  await step("lock", () => redis.call("LOCK", res, "PX", 10000));
  await step("lock-held", () => other.call("LOCK", res));
  await step("unlock", () => other.call("UNLOCK", res, out.lock));
  await step("unlock-again", () => redis.call("UNLOCK", res, out.lock));

  await redis.del(pre + "s", pre + "n", pre + "h", pre + "p1", pre + "ph", k1, k2, w).catch(() => {});
  await Promise.allSettled([redis.quit(), other.quit()]);
});
