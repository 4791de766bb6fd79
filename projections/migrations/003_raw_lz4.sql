-- The raw usage JSON with ClickHouse's default codec (LZ4): inserts are 15-35 % faster than
-- with ZSTD(3), at some disk cost (see bench/README.md, sink).
ALTER TABLE usage_events MODIFY COLUMN raw String CODEC(LZ4);
