"""Running a frozen model as TF Serving runs it: sessions, the one session/platform config builder, memory release."""
