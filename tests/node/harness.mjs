// What every Node scenario shares: one JSON report on stdout (the pytest side parses it), a
// fatal error recorded in it, and a time limit on each awaited step.

export const STEP_TIMEOUT = 10_000;

// `out` is the report object; finish() writes it and exits with `status`.
export function harness(out) {
  function finish(status) {
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(status));
  }

  function fail(reason) {
    out.fatal = String(reason?.stack ?? reason);
    finish(1);
  }

  function within(promise, label, ms = STEP_TIMEOUT) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${label}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  return { finish, fail, within };
}

// One FIFO of entries per subscription id; next(id) waits (within the step timeout) for the
// oldest entry not yet taken. `label` names the client in timeout messages.
export function inboxes(within, label) {
  const queues = {};
  const waiters = {};
  return {
    push(id, entry) {
      (queues[id] ??= []).push(entry);
      const wake = waiters[id];
      delete waiters[id];
      wake?.();
    },
    next(id) {
      return within(
        new Promise(resolve => {
          const take = () => {
            if (queues[id]?.length) resolve(queues[id].shift());
            else waiters[id] = take;
          };
          take();
        }),
        `${label} MESSAGE on ${id}`,
      );
    },
  };
}
