// Copies the contract (proto/) into dist/proto, which the client loads at run time with
// @grpc/proto-loader: the package then carries the exact proto its types were generated from.
import { cpSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const from = join(here, '..', '..', '..', 'proto', 'vodsigner');
const to = join(here, '..', 'dist', 'proto', 'vodsigner');
mkdirSync(to, { recursive: true });
cpSync(from, to, { recursive: true });
console.log(`copied ${from} -> ${to}`);
