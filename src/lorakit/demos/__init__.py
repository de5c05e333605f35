"""Self-contained demos: small worlds where lorakit's training can be watched and measured offline."""
