-- Every row inserted into dispatches, deliveries and delivery_attempts ran a foreign-key check:
-- a query per row that also share-locks the parent row. All of an account's dispatches lock the
-- same accounts row, so concurrent batches turn that lock into multixacts. Under load the checks
-- took about an eighth of PostgreSQL's CPU. These rows are written only by statements that take
-- the referenced ids from the parent rows in the same statement or from a committed parent, and
-- parents are never deleted, so the checks never found anything. The indexes stay.
ALTER TABLE dispatches DROP CONSTRAINT IF EXISTS dispatches_account_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_account_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_dispatch_id_fkey;
ALTER TABLE delivery_attempts DROP CONSTRAINT IF EXISTS delivery_attempts_delivery_id_fkey;
