"""Tezzeret's artifacts: content addresses (address), the signed manifest (manifest), the key ring (keys), Ed25519
verification (sign), stores (store), publishing (publish), verify-before-load (verify), `esper artifact|keys` (cli).

On disk, one directory per artifact id: ir.pb, weights.safetensors, compiled/*, manifest.json, manifest.sig.
"""
