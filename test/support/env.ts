/**
 * Runs `fn` with `vars` set in `process.env` (`undefined` removes one) and
 * restores each to what it was afterwards, also when `fn` throws.
 */
export async function withEnv<T>(vars: Readonly<Record<string, string | undefined>>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.keys(vars).map((name) => [name, process.env[name]] as const)
  const set = (name: string, value: string | undefined): void => {
    if (value === undefined) delete process.env[name]
    else process.env[name] = value
  }
  for (const [name, value] of Object.entries(vars)) set(name, value)
  try {
    return await fn()
  } finally {
    for (const [name, value] of saved) set(name, value)
  }
}
