"""``fastcsi.calculator.FastCSICalculator``: the ASE calculator of :mod:`fastcsi.inference`."""
from fastcsi.inference.calculator import FastCSICalculator, NotAvailableError

__all__ = ["FastCSICalculator", "NotAvailableError"]
