"""alise memory service: the KV memory manager (ledger of engine KV pools and the host tier)."""
