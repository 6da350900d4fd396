"""Documents and question answering: Haystack pipelines over a pgvector passage store (POST /documents, /qa)."""
