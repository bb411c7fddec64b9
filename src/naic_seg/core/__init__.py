"""Plain PyTorch / NumPy library behind naic-seg: no Kedro import anywhere in this package."""
