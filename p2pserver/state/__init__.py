"""State resolution (v2 and v2.1). Pure code over data, no I/O."""
