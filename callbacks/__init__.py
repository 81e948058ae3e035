"""Lightning callbacks: image logging, EMA early stopping, export."""
