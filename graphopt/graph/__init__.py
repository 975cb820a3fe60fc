"""GraphDef plumbing every pass shares: tensor names, editing, encoding, validity checks, default attrs, weightless copies."""
