"""RL post-training (DiffusionNFT): rewards, prompts, the NFT trainer."""
