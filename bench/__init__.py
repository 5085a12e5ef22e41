"""Benchmarks of the Modcus worker against the naive asyncio.run pattern and arq; see __main__."""
