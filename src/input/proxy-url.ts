import { isIP } from 'node:net';

/** A SOCKS5 proxy that outgoing connections go through, host names resolved by the proxy. */
export interface ProxyAddress {
  host: string;
  port: number;
}

/** `HOST:PORT` or `[IPv6]:PORT`; undefined when it is neither. */
export function parseProxyAddress(text: string): ProxyAddress | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(text);
  if (!match) return undefined;
  const host = match[1] ?? match[2]!;
  const port = Number(match[3]);
  if (port < 1 || port > 65535 || (match[1] !== undefined && isIP(host) !== 6)) return undefined;
  return { host, port };
}

export type ProxyChoice = { proxy?: ProxyAddress; ignored?: string };

/**
 * `--socks` when given; otherwise `ALL_PROXY` (or `all_proxy`) when it names a SOCKS5 proxy
 * (`socks5h://`, `socks5://` or `socks://`; tlsd always lets the proxy resolve names, which is what
 * `.onion` addresses need). Any other value is reported as ignored, never guessed at.
 */
export function chooseProxy(option: ProxyAddress | undefined, env: NodeJS.ProcessEnv): ProxyChoice {
  if (option) return { proxy: option };
  const variable = env.ALL_PROXY !== undefined ? 'ALL_PROXY' : env.all_proxy !== undefined ? 'all_proxy' : undefined;
  const value = variable === undefined ? '' : env[variable]!.trim();
  if (value === '') return {};
  const match = /^socks(?:5h?)?:\/\/([^/]+?)\/?$/i.exec(value);
  const proxy = match ? parseProxyAddress(match[1]!) : undefined;
  return proxy ? { proxy } : { ignored: `${variable}=${value}: tlsd uses SOCKS5 proxies only, as socks5h://HOST:PORT` };
}
