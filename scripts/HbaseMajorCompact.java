// Flushes and major-compacts HBase tables through the Java Admin API, waits until the
// compaction finished, and prints the tables' store-file bytes as HBase accounts them.
//
//   scripts/services.sh compact TABLE...      (runs this file with the HBase jars and config)
//
// Why not the Thrift1 gateway: HBase 2.x's Thrift1 `majorCompact` calls `Admin.compact`, a
// *minor* compaction, which does nothing for a store with fewer than
// `hbase.hstore.compaction.min` (3) files, and never drops delete markers.
//
// Output, one line per table on stdout:
//   TABLE store_file_bytes=N regions=R store_files=F
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hbase.HBaseConfiguration;
import org.apache.hadoop.hbase.RegionMetrics;
import org.apache.hadoop.hbase.ServerName;
import org.apache.hadoop.hbase.Size;
import org.apache.hadoop.hbase.TableName;
import org.apache.hadoop.hbase.client.Admin;
import org.apache.hadoop.hbase.client.CompactionState;
import org.apache.hadoop.hbase.client.Connection;
import org.apache.hadoop.hbase.client.ConnectionFactory;

public class HbaseMajorCompact {
  /** Longest wait for one table's compaction. */
  static final long TIMEOUT_MS = TimeUnit.MINUTES.toMillis(15);

  public static void main(String[] args) throws Exception {
    if (args.length == 0) {
      System.err.println("usage: HbaseMajorCompact TABLE...");
      System.exit(2);
    }
    Configuration conf = HBaseConfiguration.create(); // hbase-site.xml from the class path
    try (Connection conn = ConnectionFactory.createConnection(conf); Admin admin = conn.getAdmin()) {
      for (String name : args) {
        TableName table = TableName.valueOf(name);
        if (!admin.tableExists(table)) {
          System.err.println("no table " + name);
          System.exit(1);
        }
        admin.flush(table);
        long requested = System.currentTimeMillis();
        admin.majorCompact(table);
        long deadline = System.currentTimeMillis() + TIMEOUT_MS;
        long lastRequest = requested;
        // Done when nothing is compacting and every region with files records a major
        // compaction since the request (region metrics reach the master every few seconds).
        while (true) {
          Thread.sleep(500);
          boolean idle = admin.getCompactionState(table) == CompactionState.NONE;
          if (idle && allCompactedSince(admin, table, requested - 1000)) {
            break;
          }
          // A request that finds a store busy with a minor compaction of all its files is
          // dropped for that store: ask again once the table is idle and still not compacted
          // (after the metrics had time to arrive).
          if (idle && System.currentTimeMillis() - lastRequest > 10_000) {
            System.err.println("major compaction of " + name + " not done while idle: requesting it again");
            admin.majorCompact(table);
            lastRequest = System.currentTimeMillis();
          }
          if (System.currentTimeMillis() > deadline) {
            System.err.println("major compaction of " + name + " did not finish in 15 min");
            System.exit(1);
          }
        }
        long bytes = 0;
        int regions = 0;
        int files = 0;
        for (RegionMetrics m : metrics(admin, table)) {
          bytes += (long) m.getStoreFileSize().get(Size.Unit.BYTE);
          files += m.getStoreFileCount();
          regions++;
        }
        System.out.println(name + " store_file_bytes=" + bytes + " regions=" + regions + " store_files=" + files);
      }
    }
  }

  static List<RegionMetrics> metrics(Admin admin, TableName table) throws Exception {
    List<RegionMetrics> all = new java.util.ArrayList<>();
    for (ServerName s : admin.getRegionServers()) {
      all.addAll(admin.getRegionMetrics(s, table));
    }
    return all;
  }

  static boolean allCompactedSince(Admin admin, TableName table, long since) throws Exception {
    for (RegionMetrics m : metrics(admin, table)) {
      if (m.getStoreFileCount() > 0 && m.getLastMajorCompactionTimestamp() < since) {
        return false;
      }
    }
    return true;
  }
}
