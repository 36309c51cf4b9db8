"""Versioned, atomically published Parquet bank of per-user profile codes, with lookup.

Layout of a bank directory::

    <bank>/version=<UTC timestamp>/codes.parquet   user_id + one int32 column per profile
    <bank>/version=<UTC timestamp>/manifest.json   profiles, K, codebook hash, LM id, ...
    <bank>/LATEST                                  name of the newest complete version

Users missing from the bank get the reserved unknown code ``K_m`` (one past the last
real code of profile m), so a downstream embedding table for profile m has ``K_m + 1`` rows.
"""

from userip.feature_bank.bank import (
    LATEST,
    UNKNOWN_IS_K,
    BankError,
    FeatureBank,
    IncompatibleBankError,
    Manifest,
    memory_report,
    publish,
)

__all__ = ["LATEST", "UNKNOWN_IS_K", "BankError", "FeatureBank", "IncompatibleBankError",
           "Manifest", "memory_report", "publish"]
