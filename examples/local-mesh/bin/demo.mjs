#!/usr/bin/env node
// The local mesh demo is not built yet (issue: reference deployment).
console.log('ambientkit local mesh demo: not available yet.')
console.log('The packages it wires together are being built; run `npm test` to see what works today.')
