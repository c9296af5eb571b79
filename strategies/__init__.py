"""Trading logic: DRU features, EAM/SAM networks, policies, learners, CryptoModules (torch)."""
