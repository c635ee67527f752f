"""Character n-gram baselines (Karpathy15 §4): interpolated Kneser-Ney models of every order
1..20 (study.ngram.kn), their test-split results cached per corpus (study.ngram.cache), and
`python -m study.ngram CONFIG`, which fits them and logs one MLflow run per corpus."""

from study.ngram.cache import NGramResult, split_checksum, test_log_probs
from study.ngram.kn import MAX_ORDER, SMOOTHINGS, KneserNey, NGramError, check_order

__all__ = ["MAX_ORDER", "SMOOTHINGS", "KneserNey", "NGramError", "NGramResult", "check_order",
           "split_checksum", "test_log_probs"]
