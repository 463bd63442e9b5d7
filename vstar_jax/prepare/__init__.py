"""Raw interaction logs (Amazon 2018 / 2023 reviews, any CSV) -> a MiniOneRec-layout dataset."""
