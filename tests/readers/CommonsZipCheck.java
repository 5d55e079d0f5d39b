// Apache Commons Compress ZipArchiveInputStream with its default settings, front to back; prints per
// entry "name<TAB>size<TAB>crc32" computed from the bytes read, and fails if they disagree with what
// the entry (local header or data descriptor) says. Run:
//   java -cp /usr/share/java/commons-compress.jar CommonsZipCheck.java ARCHIVE   ("-" = stdin)
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.zip.CRC32;
import java.util.zip.ZipException;
import org.apache.commons.compress.archivers.zip.ZipArchiveEntry;
import org.apache.commons.compress.archivers.zip.ZipArchiveInputStream;

public class CommonsZipCheck {
    static void check(PrintWriter out, ZipArchiveEntry e, long size, long crc) throws ZipException {
        if (e.getSize() != size || e.getCrc() != crc)
            throw new ZipException(e.getName() + ": entry says " + e.getSize() + "/" + e.getCrc()
                                   + ", read " + size + "/" + crc);
        out.printf("%s\t%d\t%08x%n", e.getName(), size, crc);
    }

    public static void main(String[] args) throws IOException {
        PrintWriter out = new PrintWriter(new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8)));
        byte[] buffer = new byte[1 << 20];
        InputStream raw = args[0].equals("-") ? System.in : new FileInputStream(args[0]);
        try (ZipArchiveInputStream zin = new ZipArchiveInputStream(new BufferedInputStream(raw, 1 << 16))) {
            // Commons Compress checks no CRC itself, and reads a data descriptor only when it moves on to
            // the next entry: each entry is checked once the next one (or the end) has been reached.
            ZipArchiveEntry previous = null;
            long size = 0, crc = 0;
            for (ZipArchiveEntry e; (e = zin.getNextZipEntry()) != null; previous = e) {
                if (previous != null) check(out, previous, size, crc);
                CRC32 sum = new CRC32();
                size = 0;
                for (int n; (n = zin.read(buffer)) != -1; size += n) sum.update(buffer, 0, n);
                crc = sum.getValue();
            }
            if (previous != null) check(out, previous, size, crc);
        }
        out.flush();
    }
}
