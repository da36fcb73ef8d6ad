// BullMQ beside agentbus: the same Redis, the same shape as `agentbus load`
// (N jobs enqueued in bulk, then processed by one Worker at a concurrency),
// several runs. Prints a Markdown row of medians: items/s end to end
// (enqueue + process, as agentbus counts its spawn) and Redis main-thread
// CPU per item (INFO cpu before and after, as `agentbus bench jobs`).
//
// Usage: node bench/bullmq/bench.mjs [--items 100000] [--concurrency 50]
//        [--runs 5] [--redis redis://127.0.0.1:6379]
import { Queue, Worker, QueueEvents } from "bullmq";
import { createRequire } from "node:module";
import IORedis from "ioredis";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const items = Number(arg("items", 100000));
const concurrency = Number(arg("concurrency", 50));
const runs = Number(arg("runs", 5));
const url = new URL(arg("redis", process.env.REDIS_URL || "redis://127.0.0.1:6379"));
const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
const version = createRequire(import.meta.url)("bullmq/package.json").version;

const info = new IORedis(connection);
async function redisCpu() {
  const text = await info.info("cpu");
  const f = Object.fromEntries(text.split("\r\n").filter((l) => l.includes(":")).map((l) => l.split(":")));
  const main = f.used_cpu_user_main_thread !== undefined;
  return main
    ? Number(f.used_cpu_user_main_thread) + Number(f.used_cpu_sys_main_thread)
    : Number(f.used_cpu_user) + Number(f.used_cpu_sys);
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function once(run) {
  const name = `bench-bullmq-${process.pid}-${run}`;
  const queue = new Queue(name, { connection });
  let done = 0;
  let finished;
  const all = new Promise((resolve) => (finished = resolve));
  const cpu0 = await redisCpu();
  const started = process.hrtime.bigint();
  // Enqueue in bulk (1,000 per call), as a producer of this many would.
  // Completed jobs keep their results (BullMQ's default), as agentbus keeps
  // each item's output for the job's retention.
  for (let i = 0; i < items; i += 1000) {
    const n = Math.min(1000, items - i);
    await queue.addBulk(
      Array.from({ length: n }, (_, k) => ({ name: "item", data: { i: i + k } })),
    );
  }
  const worker = new Worker(
    name,
    async (job) => ({ doubled: job.data.i * 2 }),
    { connection, concurrency },
  );
  worker.on("completed", () => {
    done += 1;
    if (done === items) finished();
  });
  await all;
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = (await redisCpu()) - cpu0;
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  return { rate: items / secs, cpuPerItemUs: (cpu / items) * 1e6 };
}

const rates = [];
const cpus = [];
for (let r = 0; r < runs; r += 1) {
  const { rate, cpuPerItemUs } = await once(r);
  rates.push(rate);
  cpus.push(cpuPerItemUs);
}
await info.quit();
console.log(
  `| BullMQ ${version} (Node ${process.versions.node}) | ${items} jobs, 1 Worker, concurrency ${concurrency} | ` +
    `${Math.round(median(rates))} | ${median(cpus).toFixed(1)} µs | ` +
    `\`node bench/bullmq/bench.mjs --items ${items} --concurrency ${concurrency}\` |`,
);
