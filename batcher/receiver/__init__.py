"""The webhook receiver behind `batcher listen`: verify, deduplicate, record.

It never orders anything and never calls the provider: it checks each
delivery's signature over the raw body, keeps the verified event as evidence
in the ledger's database (`ledger/events.py`), and answers within milliseconds.
`batcher run` reads that evidence to settle order requests without polling.
"""
