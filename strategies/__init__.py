"""bouquet.strategies: Flower Message-API strategies and strategy wrappers (no torch)."""

from bouquet.strategies.compressed import Compressed
from bouquet.strategies.guard import ReplyGuard, check_dense_reply
from bouquet.strategies.reports import inner_report, merge_reports

__all__ = ["Compressed", "ReplyGuard", "check_dense_reply", "inner_report", "merge_reports"]
