"""Network blocks shared by several families."""
