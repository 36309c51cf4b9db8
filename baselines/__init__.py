"""LLM recommenders the papers compare with (TALLRec, CoLLM, KAR), as plain library code."""
